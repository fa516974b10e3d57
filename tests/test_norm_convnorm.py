"""ConvNorm against independent computations: the explicit operator matrix and
its SVD, a direct numpy evaluation of REFERENCE.md section 1, and the
ramp-down formula written out here."""
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.signal import correlate2d

from operators import explicit_operator, singular_values
from robustbench_convnorm.normalizers import get_normalizer
from robustbench_convnorm.normalizers.convnorm import ConvNorm2d


def _layer(c_in, c_out, k, stride=1, padding=None, **options):
    padding = (k - 1) // 2 if padding is None else padding
    options.setdefault("affine", False)
    return ConvNorm2d(c_in, c_out, k, stride, padding, **options).double()


def _numpy_filter(weight, fh, fw, eps):
    """V_k(w) = (sum_j |FFT a_kj(w)|^2 + eps)^-1/2 on the full (fh, fw) grid."""
    spectrum = np.fft.fft2(weight, s=(fh, fw))
    return (np.sum(np.abs(spectrum) ** 2, axis=1) + eps) ** -0.5


def _numpy_convnorm(x, weight, stride, padding, eps, v=None):
    """REFERENCE section 1, steps 1-5, for one image (C_in, H, W), zero padding."""
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


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (3, 1, 0), (5, 2, 2)])
def test_forward_equals_direct_numpy_computation(k, stride, padding):
    layer = _layer(2, 3, k, stride, padding, eps=1e-6).eval()
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


def test_no_gradient_reaches_the_filter():
    layer = _layer(3, 4, 3, eps=1e-6)
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
    running = None
    for n, v in enumerate(filters):
        f = max(0.5 * (1 + math.cos(math.pi * min(n, n_ramp) / n_ramp)), 0.01)
        running = v if running is None else f * v + (1 - f) * running
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


def test_affine_is_a_depthwise_conv_starting_at_the_identity():
    normalizer = get_normalizer("convnorm")
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


def test_ffts_run_in_fp32_under_autocast(monkeypatch):
    seen = []
    real_rfft2, real_irfft2 = torch.fft.rfft2, torch.fft.irfft2

    def rfft2(t, *a, **k):
        seen.append(t.dtype)
        return real_rfft2(t, *a, **k)

    def irfft2(t, *a, **k):
        seen.append(t.dtype)
        return real_irfft2(t, *a, **k)

    monkeypatch.setattr(torch.fft, "rfft2", rfft2)
    monkeypatch.setattr(torch.fft, "irfft2", irfft2)
    layer = get_normalizer("convnorm").conv(4, 8, 3, stride=1, padding=1)
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


@pytest.mark.parametrize("k,stride,padding,mode", [(3, 1, 1, "zeros"), (3, 2, 1, "zeros"), (5, 1, 2, "circular")])
def test_hand_written_backward_matches_finite_differences(k, stride, padding, mode):
    # The filtering step has its own backward (V is even, so the operator is
    # symmetric); check it numerically, with the exact and the running filter.
    layer = _layer(2, 3, k, stride, padding, padding_mode=mode, ramp_steps=3)
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    _train_steps(layer, x.detach(), 3, torch.Generator().manual_seed(5))
    layer.eval()
    assert torch.autograd.gradcheck(layer, (x,))
