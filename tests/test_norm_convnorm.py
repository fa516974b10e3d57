"""ConvNorm against independent computations: the explicit operator matrix and
its SVD, a direct numpy evaluation of the method (docs/normalizers.md), and the
ramp-down formula written out here. The Fourier-domain fast path is held to
the plain path (and, where cheap, to the same independent references); the
filter cache to one V per weight update."""
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.signal import correlate2d

from operators import explicit_operator, singular_values
from robustbench_convnorm.normalizers import convnorm as convnorm_module
from robustbench_convnorm.normalizers import convnorm_fourier as fourier
from robustbench_convnorm.normalizers import get_normalizer
from robustbench_convnorm.normalizers.convnorm import (FAST_PATH_DEFAULT, ConvNorm2d, kernel_rfft2,
                                                       set_convnorm_fast_path)

PATHS = pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])


def _layer(c_in, c_out, k, stride=1, padding=None, **options):
    padding = (k - 1) // 2 if padding is None else padding
    options.setdefault("affine", False)
    return ConvNorm2d(c_in, c_out, k, stride, padding, **options).double()


def _numpy_filter(weight, fh, fw, eps):
    """V_k(w) = (sum_j |FFT a_kj(w)|^2 + eps)^-1/2 on the full (fh, fw) grid."""
    spectrum = np.fft.fft2(weight, s=(fh, fw))
    return (np.sum(np.abs(spectrum) ** 2, axis=1) + eps) ** -0.5


def _numpy_convnorm(x, weight, stride, padding, eps, v=None):
    """The method (docs/normalizers.md, steps 1-5), for one image (C_in, H, W), zero padding."""
    c_out, c_in, k, _ = weight.shape
    full = np.stack([sum(correlate2d(x[j], weight[o, j], mode="full") for j in range(c_in))
                     for o in range(c_out)])
    fh, fw = full.shape[-2:]
    v = _numpy_filter(weight, fh, fw, eps) if v is None else v
    filtered = np.real(np.fft.ifft2(np.fft.fft2(full) * v))
    c = k - 1 - padding
    filtered = filtered[:, c:fh - c, c:fw - c]
    return filtered[:, ::stride, ::stride]


@pytest.mark.parametrize("stride", [1, 2])
def test_circular_boundary_gives_tight_frame_per_channel(stride):
    layer = _layer(3, 4, 3, stride, eps=1e-14, padding_mode="circular").eval()
    m = explicit_operator(layer, (3, 6, 6))
    per_channel = m.reshape(4, -1, m.shape[1])
    for q_k in per_channel:
        # Q_k Q_k^T = I: every singular value of the channel operator is 1.
        torch.testing.assert_close(q_k @ q_k.T, torch.eye(q_k.shape[0], dtype=q_k.dtype), atol=1e-8, rtol=0)
        sv = singular_values(q_k)
        assert torch.allclose(sv, torch.ones_like(sv), atol=1e-8)
    # The unnormalized conv is not a tight frame, so the check above has teeth.
    raw = F.conv2d(F.pad(torch.randn(1, 3, 6, 6, dtype=torch.float64), (1, 1, 1, 1), mode="circular"),
                   layer.weight)
    assert raw.abs().max() > 0


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (3, 1, 0), (1, 2, 0)])
def test_zero_padding_channel_norms_at_most_one_and_prop_3_1(k, stride, padding):
    c_out = 4
    layer = _layer(3, c_out, k, stride, padding).eval()
    m = explicit_operator(layer, (3, 6, 6))
    channel_norms = torch.stack([singular_values(q_k)[0] for q_k in m.reshape(c_out, -1, m.shape[1])])
    assert (channel_norms <= 1 + 1e-9).all(), channel_norms
    # A crop of a tight frame: close to 1, not trivially small.
    assert (channel_norms >= 0.9).all(), channel_norms
    layer_norm = singular_values(m)[0]
    # Prop. 3.1: ||Q|| <= sqrt(sum_k ||Q_k||^2) (<= sqrt(C_out)).
    assert layer_norm <= torch.sqrt((channel_norms ** 2).sum()) + 1e-9
    assert layer_norm <= math.sqrt(c_out) + 1e-9


@pytest.mark.parametrize("k,height,width", [(3, 7, 5), (5, 6, 6), (1, 4, 5)])
def test_filter_equals_direct_numpy_computation(k, height, width):
    layer = _layer(3, 4, k, eps=1e-6)
    w = layer.weight.detach().numpy()
    fh, fw = height + k - 1, width + k - 1
    expected = _numpy_filter(w, fh, fw, 1e-6)[:, :, : fw // 2 + 1]
    got = layer.exact_filter(height, width)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    assert not got.requires_grad


@PATHS
@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (3, 1, 0), (5, 2, 2)])
def test_forward_equals_direct_numpy_computation(k, stride, padding, fast):
    layer = _layer(2, 3, k, stride, padding, eps=1e-6).eval()
    layer.fast_path = fast
    x = torch.randn(2, 2, 9, 8, dtype=torch.float64)
    got = layer(x).detach().numpy()
    w = layer.weight.detach().numpy()
    expected = np.stack([_numpy_convnorm(xi, w, stride, padding, 1e-6) for xi in x.numpy()])
    reference_shape = F.conv2d(x, layer.weight, stride=stride, padding=padding).shape
    assert got.shape == tuple(reference_shape)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-11)


def test_pointwise_kernel_is_scaled_by_inverse_channel_norm():
    layer = _layer(5, 6, 1, stride=2, padding=0, eps=0.0)
    x = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    norms = layer.weight.detach().reshape(6, -1).norm(dim=1)
    expected = F.conv2d(x, layer.weight, stride=2) / norms.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected)


@PATHS
def test_no_gradient_reaches_the_filter(fast):
    layer = _layer(3, 4, 3, eps=1e-6)
    layer.fast_path = fast
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    r = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    (layer(x) * r).sum().backward()
    grad_layer = layer.weight.grad.clone()

    def by_hand(weight, v):
        full = F.conv2d(x, weight, padding=2)
        out = torch.fft.irfft2(torch.fft.rfft2(full) * v, s=full.shape[-2:])
        return out[..., 1:-1, 1:-1]

    w = layer.weight.detach().clone().requires_grad_(True)
    v_const = layer.exact_filter(6, 6)
    (by_hand(w, v_const) * r).sum().backward()
    torch.testing.assert_close(grad_layer, w.grad)

    # Differentiating through V gives another gradient: the check above can fail.
    w2 = layer.weight.detach().clone().requires_grad_(True)
    spectrum = torch.fft.rfft2(w2, s=(8, 8))
    v_live = (spectrum.abs().square().sum(1) + 1e-6).rsqrt()
    (by_hand(w2, v_live) * r).sum().backward()
    assert not torch.allclose(grad_layer, w2.grad, atol=1e-6)


def _train_steps(layer, x, steps, generator):
    """Training forwards with the weight perturbed in between (as an optimizer
    would); returns the exact filter of each pass."""
    filters = []
    layer.train()
    for _ in range(steps):
        with torch.no_grad():
            layer.weight.add_(0.3 * torch.randn(layer.weight.shape, generator=generator, dtype=layer.weight.dtype))
        filters.append(layer.exact_filter(*x.shape[-2:]))
        layer(x)
    return filters


def test_running_filter_follows_the_cosine_ramp_down():
    n_ramp = 4
    layer = _layer(2, 3, 3, ramp_steps=n_ramp)
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    filters = _train_steps(layer, x, 7, torch.Generator().manual_seed(1))
    running = torch.zeros_like(filters[0])  # the average starts from zero ...
    for n, v in enumerate(filters, start=1):  # ... and pass n uses f(n), n counted from 1
        f = max(0.5 * (1 + math.cos(math.pi * min(n, n_ramp) / n_ramp)), 0.01)
        running = f * v + (1 - f) * running
    assert int(layer.num_steps) == 7
    torch.testing.assert_close(layer.running_filter, running, rtol=1e-12, atol=0)
    # Past N the weight stays at the floor 0.01.
    assert float(layer.running_weight()) == pytest.approx(0.01)

    # Evaluation at the training size uses the running filter ...
    layer.eval()
    expected = np.stack([_numpy_convnorm(xi, layer.weight.detach().numpy(), 1, 1, 1e-6,
                                         v=_full_from_half(running.numpy(), 8)) for xi in x.numpy()])
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-9, atol=1e-11)
    # ... which differs from the exact filter of the final weights.
    exact = ConvNorm2d(2, 3, 3, 1, 1, affine=False, eval_filter="exact").double().eval()
    exact.weight.data.copy_(layer.weight.data)
    assert not torch.allclose(exact(x), layer(x), atol=1e-6)


def _full_from_half(v_half, fw):
    """Rebuild the full-grid real filter from its rfft2 half (V is even)."""
    fh = v_half.shape[1]
    full = np.empty(v_half.shape[:2] + (fw,))
    full[:, :, : v_half.shape[2]] = v_half
    for col in range(v_half.shape[2], fw):
        full[:, :, col] = v_half[:, (-np.arange(fh)) % fh, fw - col]
    return full


def test_counter_and_running_filter_survive_save_and_load():
    layer = _layer(2, 3, 3, ramp_steps=10)
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    _train_steps(layer, x, 3, torch.Generator().manual_seed(2))
    assert "num_steps" in layer.state_dict() and "running_filter" in layer.state_dict()

    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = _layer(2, 3, 3, ramp_steps=10)
    assert fresh.running_filter.numel() == 0  # shape unknown until training or loading
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert int(fresh.num_steps) == 3
    torch.testing.assert_close(fresh.running_filter, layer.running_filter, rtol=0, atol=0)
    layer.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)

    # Resuming continues the ramp-down where it stopped (same f, same average).
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    _train_steps(layer, x, 2, gen_a)
    _train_steps(fresh, x, 2, gen_b)
    assert int(fresh.num_steps) == 5
    torch.testing.assert_close(fresh.running_filter, layer.running_filter, rtol=0, atol=0)


def test_other_evaluation_size_uses_the_exact_filter():
    layer = _layer(2, 3, 3, ramp_steps=2)  # a short ramp: the average lags the weights
    _train_steps(layer, torch.randn(2, 2, 8, 8, dtype=torch.float64), 3, torch.Generator().manual_seed(4))
    layer.eval()
    exact = _layer(2, 3, 3, eval_filter="exact").eval()
    exact.weight.data.copy_(layer.weight.data)
    small = torch.randn(2, 2, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(small), exact(small))
    big = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    assert not torch.allclose(layer(big), exact(big), atol=1e-6)


def test_epsilon_guards_frequencies_without_kernel_energy():
    # A single input channel whose kernel sums to zero: no energy at frequency 0;
    # plus an all-zero output channel.
    layer = _layer(1, 2, 3)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0, 1, 0], layer.weight[0, 0, 1, 2] = 1.0, -1.0
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    out = layer.eval()(x)
    assert torch.isfinite(out).all()
    assert torch.isfinite(layer.exact_filter(6, 6)).all()
    assert out[:, 1].abs().max() == 0
    unguarded = _layer(1, 2, 3, eps=0.0).eval()
    unguarded.weight.data.copy_(layer.weight.data)
    assert not torch.isfinite(unguarded.exact_filter(6, 6)).all()


def test_affine_is_a_depthwise_conv_that_can_start_at_the_identity():
    normalizer = get_normalizer("convnorm", affine_init="identity")
    layer = normalizer.conv(3, 4, 3, stride=2, padding=1)
    assert isinstance(layer.affine, torch.nn.Conv2d) and layer.affine.groups == 4
    assert layer.affine.kernel_size == (3, 3) and layer.affine.bias is not None
    plain = get_normalizer("convnorm", affine=False).conv(3, 4, 3, stride=2, padding=1)
    assert plain.affine is None
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("affine.")})
    x = torch.randn(2, 3, 8, 8)
    layer.eval(), plain.eval()
    torch.testing.assert_close(layer(x), plain(x))
    # ... and it learns: it receives a gradient.
    layer.train()
    layer(x).square().sum().backward()
    assert layer.affine.weight.grad.abs().sum() > 0


@PATHS
def test_ffts_run_in_fp32_under_autocast(monkeypatch, fast):
    seen = []

    def recording(fn):
        def wrapped(t, *a, **k):
            seen.append(t.dtype)
            return fn(t, *a, **k)
        return wrapped

    for name in ("rfft2", "irfft2", "fft2", "ifft2"):
        monkeypatch.setattr(torch.fft, name, recording(getattr(torch.fft, name)))
    layer = get_normalizer("convnorm").conv(4, 8, 3, stride=1, padding=1)
    layer.fast_path = fast
    x = torch.randn(2, 4, 8, 8)
    reference = layer(x)
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert seen and all(d in (torch.float32, torch.complex64) for d in seen), seen
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)


def test_options_are_validated():
    with pytest.raises(ValueError, match="eval_filter"):
        get_normalizer("convnorm", eval_filter="average")
    with pytest.raises(ValueError, match="padding"):
        ConvNorm2d(2, 2, 3, padding=3)


@PATHS
@pytest.mark.parametrize("k,stride,padding,mode", [(3, 1, 1, "zeros"), (3, 2, 1, "zeros"), (5, 1, 2, "circular")])
def test_hand_written_backward_matches_finite_differences(k, stride, padding, mode, fast):
    # Both paths have a hand-written backward (plain: V is even, so the filter
    # is symmetric; fast: the adjoint of every step); check them numerically,
    # with the exact and the running filter, for the input and the weight.
    layer = _layer(2, 3, k, stride, padding, padding_mode=mode, ramp_steps=3)
    layer.fast_path = fast
    x = torch.randn(3, 2, 7, 6, dtype=torch.float64, requires_grad=True)  # odd batch
    assert torch.autograd.gradcheck(layer, (x,))
    _train_steps(layer, x.detach(), 3, torch.Generator().manual_seed(5))
    layer.eval()
    # With the running filter V is a constant, so the layer is linear in the
    # weight too and finite differences see the weight gradient (with the exact
    # filter they would also see V move, which the stop-gradient leaves out).
    w = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp, wt: torch.func.functional_call(layer, {"weight": wt}, (inp,)), (x, w))


# ----------------------------------------------------------- filter cache
def _count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


@PATHS
def test_filter_is_computed_once_per_weight_update(monkeypatch, fast):
    # The plain path computes V through kernel_rfft2, the fast path by its
    # own DFT of the taps (filter_from_spectrum, or for wide layers
    # filter_from_weight): count whichever runs.
    if fast:
        calls = _count_calls(monkeypatch, fourier, "filter_from_spectrum")
        assert not _count_calls(monkeypatch, fourier, "filter_from_weight")
    else:
        calls = _count_calls(monkeypatch, convnorm_module, "kernel_rfft2")
    layer = ConvNorm2d(2, 3, 3, 1, 1, eval_filter="exact").eval()
    layer.fast_path = fast
    x = torch.randn(2, 2, 6, 6)
    first = layer(x)
    for _ in range(3):  # attacks, Lipschitz probes: same weights, many forwards
        torch.testing.assert_close(layer(x), first, rtol=0, atol=0)
    assert len(calls) == 1

    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer.train()
    for step in range(2):  # e.g. fgsm_rs: two training forwards per optimizer step
        opt.zero_grad()
        layer(x).square().sum().backward()
        layer(x)
        assert len(calls) == 1 + step  # step 0: still the weights of the evaluation above
        opt.step()  # in-place update: bumps the weight's version
    assert len(calls) == 2
    assert int(layer.num_steps) == 4  # the running filter still counts every training forward

    # load_state_dict copies into the parameter in place: also a new version.
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["weight"] += 0.5
    layer.load_state_dict(state)
    before = len(calls)
    layer.eval()
    after_load = layer(x)
    assert len(calls) == before + 1

    # The cache changes nothing: the same output without it.
    layer._filter_cache.clear()
    torch.testing.assert_close(layer(x), after_load, rtol=0, atol=0)


@PATHS
def test_running_filter_semantics_unchanged_by_the_cache(fast):
    # Two training forwards with the same weights are two updates of the average.
    layer = _layer(2, 3, 3, ramp_steps=4)
    layer.fast_path = fast
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    layer.train()
    layer(x)
    v1 = layer.exact_filter(6, 6)
    with torch.no_grad():
        layer.weight.mul_(1.7).add_(0.1)
    v2 = layer.exact_filter(6, 6)
    layer(x), layer(x)
    f1, f2, f3 = (max(0.5 * (1 + math.cos(math.pi * n / 4)), 0.01) for n in (1, 2, 3))
    expected = f3 * v2 + (1 - f3) * (f2 * v2 + (1 - f2) * (f1 * v1))
    assert int(layer.num_steps) == 3
    torch.testing.assert_close(layer.running_filter, expected, rtol=1e-12, atol=0)


def test_filters_handed_out_are_copies():
    layer = _layer(2, 3, 3, eval_filter="exact").eval()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    reference = layer(x)
    for v in (layer.exact_filter(6, 6), layer.current_filter(6, 6)):
        v.zero_()  # a caller scribbling on its result ...
    torch.testing.assert_close(layer(x), reference, rtol=0, atol=0)  # ... does not reach the cache


@PATHS
def test_filter_cached_under_inference_mode_serves_autograd_later(fast):
    layer = _layer(2, 3, 3, eval_filter="exact").eval()
    layer.fast_path = fast
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    with torch.inference_mode():
        layer(x)
    x.requires_grad_(True)
    layer(x).sum().backward()  # V from the cache is saved for backward: no inference tensor
    assert x.grad is not None


# ------------------------------------------------------------- fast path
def _run(layer, x, fast, r):
    layer.fast_path = fast
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = layer(x)
    (out.float() * r).sum().backward()
    grads = [p.grad.clone() for p in (layer.weight, layer.bias) if p is not None]
    return (out, x.grad, *grads)


def _assert_paths_match(layer, x, rtol):
    with torch.no_grad():
        shape = layer(x).shape
    r = torch.randn(shape, dtype=x.dtype).float()
    plain = _run(layer, x, False, r)
    fast = _run(layer, x, True, r)
    assert layer.uses_fast_path(x)
    for a, b in zip(plain, fast):
        assert a.shape == b.shape and a.dtype == b.dtype
        # Relative to the tensor's scale: the two paths round differently.
        torch.testing.assert_close(b, a, rtol=0, atol=rtol * float(a.detach().abs().max()))


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("mode", ["zeros", "circular"])
@pytest.mark.parametrize("k,padding", [(2, 0), (2, 1), (3, 0), (3, 1), (5, 0), (5, 1)])
@pytest.mark.parametrize("stride", [1, 2])
def test_fast_path_matches_plain_path(k, padding, stride, mode, dtype, rtol):
    layer = ConvNorm2d(3, 4, k, stride, padding, bias=True, padding_mode=mode, ramp_steps=3).to(dtype)
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)  # added before the filter: scaled by V(0) on both paths
    x = torch.randn(5, 3, 7, 6, dtype=dtype)  # odd batch, odd and even sizes
    layer.train()
    _assert_paths_match(layer, x, rtol)  # exact V
    layer(x)
    layer.eval()
    _assert_paths_match(layer, x, rtol)  # running V


def test_fast_path_gradients_through_autograd_grad(monkeypatch):
    # autograd.grad(loss, x) (attacks) skips the weight gradient; asking for
    # the weight (alone or with x) still gets it.
    layer = ConvNorm2d(3, 4, 3, 1, 1).double()
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    grads = {}
    for fast in (False, True):
        layer.fast_path = fast
        loss = layer(x).square().sum()
        grads[fast] = torch.autograd.grad(loss, [x, layer.weight])
        assert torch.autograd.grad(layer(x).square().sum(), layer.weight)[0].shape == layer.weight.shape
    calls = _count_calls(monkeypatch, torch, "bmm")
    gx = torch.autograd.grad(layer(x).square().sum(), x)[0]
    assert len(calls) == 2  # forward and the input gradient: no weight-gradient product
    torch.testing.assert_close(gx, grads[False][0], rtol=1e-12, atol=0)
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12 * float(a.abs().max()))
    assert layer.weight.grad is None


def test_fast_path_covers_batch_of_one_channels_last_and_leaves_1x1_kernels_alone():
    layer = ConvNorm2d(3, 4, 3, 2, 1)
    _assert_paths_match(layer, torch.randn(1, 3, 8, 8), 1e-5)
    _assert_paths_match(layer, torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last), 1e-5)
    pointwise = ConvNorm2d(3, 4, 1, 2, 0)
    x = torch.randn(2, 3, 8, 8)
    assert not pointwise.uses_fast_path(x)  # its flat spectrum needs no transform at all
    pointwise.fast_path = False
    reference = pointwise(x)
    pointwise.fast_path = True
    torch.testing.assert_close(pointwise(x), reference, rtol=0, atol=0)


def test_fast_path_under_bf16_autocast():
    layer = get_normalizer("convnorm").conv(4, 8, 3, stride=2, padding=1)
    x = torch.randn(3, 4, 8, 8)
    r = torch.randn(3, 8, 4, 4)
    reference = _run(layer, x, True, r)  # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _run(layer, x, False, r)
        fast = _run(layer, x, True, r)
    assert plain[0].dtype == fast[0].dtype == torch.bfloat16
    assert fast[1].dtype == fast[2].dtype == torch.float32
    for p, f, ref in zip(plain, fast, reference):
        scale = float(ref.detach().abs().max())
        # The fast path transforms the fp32 operands (plain: a bf16 conv), so
        # both are within bf16 rounding of the fp32 result and of each other.
        torch.testing.assert_close(f.float(), ref, rtol=0, atol=2e-2 * scale)
        torch.testing.assert_close(p.float(), ref, rtol=0, atol=2e-2 * scale)
        torch.testing.assert_close(f.float(), p.float(), rtol=0, atol=3e-2 * scale)


def test_fast_path_switch(monkeypatch):
    model = torch.nn.Sequential(ConvNorm2d(3, 4, 3, 1, 1), torch.nn.ReLU(), ConvNorm2d(4, 4, 3, 2, 1))
    x = torch.randn(2, 3, 8, 8)
    assert all(m.fast_path is None for m in model if isinstance(m, ConvNorm2d))
    assert FAST_PATH_DEFAULT["cuda"] is False  # never measured there: the plain path
    monkeypatch.setitem(FAST_PATH_DEFAULT, "cpu", False)
    assert not model[0].uses_fast_path(x)
    monkeypatch.setitem(FAST_PATH_DEFAULT, "cpu", True)
    assert model[0].uses_fast_path(x)
    assert set_convnorm_fast_path(model, False) == 2
    assert not any(m.uses_fast_path(x) for m in model if isinstance(m, ConvNorm2d))
    set_convnorm_fast_path(model, None)
    assert model[2].fast_path is None and model[2].uses_fast_path(x)
    with pytest.raises(TypeError):
        set_convnorm_fast_path(model, "yes")


# ------------------------------------------------------------- FFT sizes
def _filter_on_grid(layer, x, fh, fw):
    """The plain pipeline with the filter sampled on an (fh, fw) grid instead
    of the method's (H+k-1, W+k-1): the full output zero-padded to that grid."""
    k = layer.kernel_size[0]
    full = F.conv2d(x, layer.weight, padding=k - 1)
    spectrum = kernel_rfft2(layer.weight.detach(), fh, fw)
    v = (spectrum.abs().square().sum(1) + layer.eps).rsqrt()
    filtered = torch.fft.irfft2(torch.fft.rfft2(full, s=(fh, fw)) * v, s=(fh, fw))
    c = k - 1 - layer.padding[0]
    return filtered[..., c:full.shape[-2] - c, c:full.shape[-1] - c]


def test_fft_grid_is_part_of_the_method():
    # V sampled on another grid is another filter: e.g. 16x16 (a "fast" size)
    # instead of 9x9 for a 7x7 input. No transform of the layer can move to a
    # faster size; only sizes fixed by the method itself are used (the folded
    # inverse of strided layers, below).
    layer = _layer(2, 3, 3).eval()
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(_filter_on_grid(layer, x, 9, 9), layer(x))
    for grid in [(10, 10), (12, 12), (16, 16)]:
        assert not torch.allclose(_filter_on_grid(layer, x, *grid), layer(x), atol=1e-3), grid


def test_strided_output_from_the_folded_spectrum_is_the_subsampled_one():
    # Subsampling by s in space = summing the s x s tiles of the spectrum: the
    # fast path's inverse transform of a stride-2 layer runs on the (F/2)^2
    # grid (17x17 instead of 34x34 for a 32x32 input) with the same result.
    y = torch.randn(80, 2, 3, dtype=torch.complex128)  # (frequency of a 10x8 grid, batch, channel)
    folded = fourier._fold(y, 2, 2, 10, 8).view(5, 4, 2, 3).permute(2, 3, 0, 1)
    full = y.view(10, 8, 2, 3).permute(2, 3, 0, 1)
    torch.testing.assert_close(torch.fft.ifft2(folded) / 4, torch.fft.ifft2(full)[..., ::2, ::2])
    # ... and the adjoint pair (_unfold) passes the dot-product test.
    g = torch.randn(20, 2, 3, dtype=torch.complex128)
    lhs = (fourier._fold(y, 2, 2, 10, 8).conj() * g).sum()
    rhs = (y.conj() * fourier._unfold(g, 2, 2, 10, 8)).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("k,padding,size,mode", [(3, 1, 7, "zeros"), (5, 2, 6, "zeros"), (5, 2, 3, "circular")])
def test_kernel_spectrum_by_direct_dft_equals_kernel_rfft2(k, padding, size, mode):
    # The fast path evaluates the kernel's DFT at the grid frequencies directly
    # from the k x k taps (no zero-padded FFT); V is the same. The circular case
    # has a kernel larger than the grid: the taps alias in both.
    layer = _layer(3, 4, k, 1, padding, padding_mode=mode)
    grid = layer.fft_size(size, size)
    phase = fourier.phase_matrix(layer.kernel_size, layer.padding, grid, torch.complex128, "cpu")
    spectrum = fourier.kernel_spectrum(layer.weight, phase)
    for v_fast in (fourier.filter_from_weight(layer.weight, phase, grid, layer.eps),
                   fourier.filter_from_spectrum(spectrum, grid, layer.eps)):
        torch.testing.assert_close(v_fast.permute(2, 0, 1), layer.exact_filter(size, size), rtol=1e-12, atol=0)
    if k <= grid[0]:
        # S is the FFT of the kernel with its origin moved to the padding offset.
        shifted = torch.roll(F.pad(layer.weight.detach(), (0, grid[1] - k, 0, grid[0] - k)), (-padding, -padding), (-2, -1))
        torch.testing.assert_close(spectrum.view(*grid, 4, 3).permute(2, 3, 0, 1), torch.fft.fft2(shifted))


def test_fast_path_in_frequency_chunks_matches(monkeypatch):
    # Wide layers build S a few frequencies at a time; force many small chunks.
    layer = ConvNorm2d(3, 4, 3, 2, 1, ramp_steps=3).double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    monkeypatch.setattr(fourier, "CHUNK_BYTES", 7 * 4 * 3 * 16)  # 7 frequencies per chunk
    assert fourier.frequency_chunks(100, 4, 3, 16) == 7
    calls = _count_calls(monkeypatch, fourier, "filter_from_weight")
    _assert_paths_match(layer, x, 1e-12)  # exact V, computed in chunks too
    assert calls
    layer(x)
    layer.eval()
    _assert_paths_match(layer, x, 1e-12)
