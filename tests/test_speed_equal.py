"""The faster paths of issue 24 compute the values of the paths they replace:
outputs and gradients equal to the old formulas (kept here as references)
within 1e-6 of each tensor's scale in float32, on random kernels, shapes and
strides; and the comparison itself catches a planted change of value."""
from __future__ import annotations

import pytest
import torch

# The formulas before issue 24, kept where the benchmark times them against the new ones.
from benchmarks.old_vs_new import autograd_orthogonal_matrices, old_pack

from robustbench_convnorm.normalizers import cayley as cayley_mod
from robustbench_convnorm.normalizers import fourier_product
from robustbench_convnorm.normalizers.cayley import CayleyConv2d, space_to_depth
from robustbench_convnorm.normalizers.lot import LOTConv2d

RTOL = 1e-6


def assert_close_rel(new: torch.Tensor, old: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    scale = old.abs().max().clamp_min(1e-30)
    err = ((new - old).abs().max() / scale).item()
    assert err <= rtol, f"{what}: relative difference {err:.2e} > {rtol:.0e}"


# ------------------------------------------------------------------ Cayley
def orthogonal_matrices_reference(layer, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """Q(w) before issue 24: the kernel's transform, then scaled, then the
    autograd Cayley transform (LOT: its own orthogonalization, unchanged)."""
    if isinstance(layer, LOTConv2d):
        return layer.orthogonal_matrices(h, w, dtype)
    return autograd_orthogonal_matrices(layer, h, w, dtype)


def cayley_forward_reference(layer: CayleyConv2d, x: torch.Tensor) -> torch.Tensor:
    """CayleyConv2d.forward before issue 24: every layer through its spectrum,
    autograd through the transforms, Q applied on strided permuted views."""
    s = layer.stride[0]
    if s > 1:
        x = space_to_depth(x, s)
    b, c, h, w = x.shape
    q = orthogonal_matrices_reference(layer, h, w, x.dtype)
    xf = torch.fft.rfft2(x).permute(2, 3, 1, 0)
    y = torch.fft.irfft2((q @ xf).permute(3, 2, 0, 1), s=(h, w))
    if layer.bias is not None:
        y = y + layer.bias.view(1, -1, 1, 1)
    return y


def run_both(layer, x, forward_new, forward_old):
    results = []
    for fwd in (forward_new, forward_old):
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        y = fwd(layer, xi)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(y)
        y.backward(g)
        grads = [xi.grad] + [p.grad for p in layer.parameters() if p.grad is not None]
        results.append([y.detach()] + grads)
    return results


CAYLEY_CASES = [  # (c_in, c_out, k, stride, batch, size, bias)
    (4, 4, 3, 1, 3, 8, False),
    (3, 6, 3, 1, 2, 6, True),     # tall Q
    (6, 3, 1, 1, 2, 5, False),    # wide Q, odd size
    (4, 8, 3, 2, 3, 8, False),    # space-to-depth
    (16, 16, 3, 1, 4, 16, False),  # ResNet-18's first stage at width 0.25, smaller
    (32, 32, 3, 1, 3, 8, True),
    (8, 12, 5, 1, 2, 10, False),   # tall Q, 5x5 kernel
]


def cayley_layer(cls, case, dtype=torch.float32):
    c_in, c_out, k, s, n, size, bias = case
    torch.manual_seed(hash(case) % 1000)
    layer = cls(c_in, c_out, k, stride=s, bias=bias).to(dtype)
    return layer, torch.randn(n, c_in, size, size, dtype=dtype)


@pytest.mark.parametrize("case", CAYLEY_CASES)
def test_cayley_new_path_equals_old_outputs_and_gradients(case):
    layer, x = cayley_layer(CayleyConv2d, case)
    new, old = run_both(layer, x, lambda m, t: m(t), cayley_forward_reference)
    assert len(new) == len(old) == 4 + int(case[-1])  # output, input grad, weight, alpha (, bias)
    alpha = 2 + [name for name, _ in layer.named_parameters()].index("alpha")  # after output, input grad
    for i, (a, b) in enumerate(zip(new, old)):
        if i == alpha:  # alpha's gradient: one scalar, a sum with cancellation (below)
            continue
        assert_close_rel(a, b, f"tensor {i}")
    # The same function: in float64 the two paths agree to rounding of float64.
    new64, old64 = run_both(layer.double(), x.double(), lambda m, t: m(t), cayley_forward_reference)
    for i, (a, b) in enumerate(zip(new64, old64)):
        assert_close_rel(a, b, f"float64 tensor {i}", rtol=1e-12)
    # alpha's gradient is one scalar, the sum of every kernel entry's
    # contribution, most of which cancel: in float32 neither path is within
    # 1e-6 of the float64 value (measured 0.5-9e-6 for both, the old one up to
    # 4e-6), so float32 is held to the accuracy float32 has there.
    assert_close_rel(new[alpha], old[alpha], "alpha gradient (float32)", rtol=2e-5)


# The direct route of 1x1 kernels (after space-to-depth) at the sizes ResNet-18
# uses it (3x3 stride-2 convs, 1x1 stride-2 shortcuts), for Cayley and LOT.
POINTWISE_CASES = [  # (c_in, c_out, k, stride, batch, size, bias)
    (16, 32, 3, 2, 4, 16, False),
    (32, 64, 1, 2, 4, 8, True),
    (64, 32, 1, 1, 2, 4, False),  # wide after nothing: C_out < C_in
    (3, 12, 3, 3, 2, 9, False),   # stride 3: taps of a 3x3 stride-3 conv
]


@pytest.mark.parametrize("cls", ["cayley", "lot"])
@pytest.mark.parametrize("case", POINTWISE_CASES)
def test_pointwise_route_equals_the_fourier_route(cls, case):
    layer_type = CayleyConv2d if cls == "cayley" else LOTConv2d
    layer, x = cayley_layer(layer_type, case, torch.float64)
    assert layer.kernel_size == (1, 1)
    new, old = run_both(layer, x, lambda m, t: m(t), cayley_forward_reference)
    assert len(new) == len(old) == 3 + (cls == "cayley") + int(case[-1])
    for i, (a, b) in enumerate(zip(new, old)):
        assert_close_rel(a, b, f"float64 tensor {i}", rtol=1e-12)
    layer, x = layer.float(), x.float()
    new, old = run_both(layer, x, lambda m, t: m(t), cayley_forward_reference)
    for i, (a, b) in enumerate(zip(new[:3], old[:3])):  # output, input and weight gradients
        assert_close_rel(a, b, f"float32 tensor {i}")


def test_pointwise_q_is_real_and_lot_records_the_real_grid():
    layer = LOTConv2d(8, 16, 3, stride=2)
    layer(torch.randn(2, 8, 12, 12))
    q = layer.orthogonal_matrices(1, 1)
    assert torch.equal(q.imag, torch.zeros_like(q.imag))  # the route's premise: every phase is 1
    assert layer.last_grid.tolist() == [6, 6]  # the grid after space-to-depth, not 1x1
    with pytest.raises(ValueError, match="divisible by 2"):
        layer(torch.randn(2, 8, 11, 12))  # the direct route checks the size as space-to-depth does


def test_pointwise_comparison_catches_a_planted_change(monkeypatch):
    # The s x s taps read in transposed order (a plausible slip when Q's
    # space-to-depth channels become a strided kernel) must be caught.
    def planted(self, x, dtype):
        s = self.stride[0]
        q = self._q(1, 1, dtype)[0, 0].real.reshape(self.out_channels, self.in_channels, s, s)
        return torch.nn.functional.conv2d(x, q.transpose(-1, -2), stride=s)

    monkeypatch.setattr(CayleyConv2d, "_forward_pointwise", planted)
    layer, x = cayley_layer(CayleyConv2d, POINTWISE_CASES[0], torch.float64)
    new, old = run_both(layer, x, lambda m, t: m(t), cayley_forward_reference)
    with pytest.raises(AssertionError):
        assert_close_rel(new[0], old[0], "planted")


@pytest.mark.parametrize("case", [(4, 4, 3, 1, 3, 8, False), (6, 10, 3, 1, 2, 7, True), (16, 16, 3, 1, 4, 16, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lot_fourier_route_equals_the_old_one(case, dtype):
    layer, x = cayley_layer(LOTConv2d, case, dtype)
    new, old = run_both(layer, x, lambda m, t: m(t), cayley_forward_reference)
    for i, (a, b) in enumerate(zip(new, old)):
        assert_close_rel(a, b, f"tensor {i}", rtol=RTOL if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("case", CAYLEY_CASES[:3])
def test_fourier_product_saved_and_rebuilt_spectrum_agree(case, monkeypatch):
    layer, x = cayley_layer(CayleyConv2d, case)
    results = []
    for recompute in (True, False):
        monkeypatch.setattr(fourier_product, "RECOMPUTE_SPECTRUM", recompute)
        results.append(run_both(layer, x, lambda m, t: m(t), lambda m, t: m(t))[0])
    for i, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), f"tensor {i}"  # the same calls on the same input


def test_cayley_transform_backward_catches_a_planted_change(monkeypatch):
    # The hand-written backward without its G1 term (the identity in P = Q + [I; 0]).
    def planted(ctx, grad):
        inv, q, v = ctx.saved_tensors
        grad_a = -((q.mH @ grad) @ inv.mH)
        return grad_a - grad_a.mH

    monkeypatch.setattr(cayley_mod.CayleyTransform, "backward", staticmethod(planted))
    layer, x = cayley_layer(CayleyConv2d, CAYLEY_CASES[0], torch.float64)
    new, old = run_both(layer, x, lambda m, t: m(t), cayley_forward_reference)
    assert_close_rel(new[0], old[0], "output (not affected)", rtol=1e-12)
    with pytest.raises(AssertionError, match="weight"):
        assert_close_rel(new[2], old[2], "weight gradient")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("cls", ["cayley", "lot"])
@pytest.mark.parametrize("case", [CAYLEY_CASES[4], POINTWISE_CASES[0]])
def test_new_paths_equal_the_old_ones_on_cuda(cls, case):
    # cuFFT and cuBLAS: the same function in float64; float32 within the
    # rounding of its transforms (TF32 off: it would round the products to 1e-3).
    layer_type = CayleyConv2d if cls == "cayley" else LOTConv2d
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
            layer, x = cayley_layer(layer_type, case, dtype)
            new, old = run_both(layer.cuda(), x.cuda(), lambda m, t: m(t), cayley_forward_reference)
            for i, (a, b) in enumerate(zip(new, old)):
                assert_close_rel(a, b, f"{dtype} tensor {i}", rtol=rtol)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32


def test_cayley_eval_cached_q_equals_old_path():
    torch.manual_seed(1)
    layer = CayleyConv2d(5, 5, 3).eval()
    x = torch.randn(2, 5, 7, 7)
    with torch.no_grad():
        assert_close_rel(layer(x), cayley_forward_reference(layer, x), "eval output")
        assert_close_rel(layer(x), cayley_forward_reference(layer, x), "eval output, cached Q")


@pytest.mark.parametrize("size", [6, 7])
def test_cayley_comparison_catches_a_planted_change(size, monkeypatch):
    # The backward of irfft2 weighting every column of the half spectrum
    # twice (DC and Nyquist included: a plausible slip) must be caught.
    def planted(h, w, dtype, device):
        return torch.full((h, w // 2 + 1, 1, 1), 2.0 / (h * w), dtype=dtype, device=device)

    monkeypatch.setattr(fourier_product, "column_weights", planted)
    layer, x = cayley_layer(CayleyConv2d, (4, 4, 3, 1, 2, size, False), torch.float64)
    new, old = run_both(layer, x, lambda m, t: m(t), cayley_forward_reference)
    assert_close_rel(new[1], old[1], "input gradient (not affected)", rtol=1e-12)
    with pytest.raises(AssertionError, match="weight"):
        assert_close_rel(new[2], old[2], "weight gradient")


# ----------------------------------------------------------------- ConvNorm
from robustbench_convnorm.normalizers import convnorm_fourier  # noqa: E402
from robustbench_convnorm.normalizers.convnorm import ConvNorm2d  # noqa: E402

CONVNORM_CASES = [  # (c_in, c_out, k, stride, padding, batch, size, bias, eval mode)
    (3, 4, 3, 1, 1, 3, 8, False, False),
    (4, 6, 3, 2, 1, 4, 8, True, False),
    (5, 3, 3, 2, 0, 2, 7, False, False),
    (4, 4, 5, 1, 2, 3, 6, False, True),    # eval: the running filter
    (6, 8, 3, 2, 1, 5, 9, False, True),
]


def convnorm_pair(case, seed):
    c_in, c_out, k, s, p, n, size, bias, evaluate = case
    torch.manual_seed(seed)
    layer = ConvNorm2d(c_in, c_out, k, stride=s, padding=p, bias=bias, affine_init="conv_default")
    layer.fast_path = True
    x = torch.randn(n, c_in, size, size)
    layer(x)  # one training pass: a running filter exists
    with torch.no_grad():
        layer.weight.add_(0.1 * torch.randn_like(layer.weight))  # running filter != exact filter
    layer.train(not evaluate)
    return layer, x


@pytest.mark.parametrize("case", CONVNORM_CASES)
def test_convnorm_recomputed_input_spectrum_equals_saved_one(case, monkeypatch):
    # New path: conj(X) rebuilt in backward; old path: saved in forward.
    layer, x = convnorm_pair(case, seed=sum(case[:7]))
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    results = []
    for recompute in (True, False):
        monkeypatch.setattr(convnorm_fourier, "RECOMPUTE_INPUT_SPECTRUM", recompute)
        layer.load_state_dict(state)
        results.append(run_both(layer, x, lambda m, t: m(t), lambda m, t: m(t))[0])
    new, old = results
    assert len(new) == len(old) == 1 + 1 + len(list(layer.parameters()))
    for i, (a, b) in enumerate(zip(new, old)):
        assert_close_rel(a, b, f"tensor {i}")


def test_convnorm_comparison_catches_a_planted_change(monkeypatch):
    # conj(X) rebuilt in backward on a grid one sample too wide (a wrong FFT
    # size, cropped back to the right shape) must be caught.
    real = convnorm_fourier.input_spectrum
    calls = []

    def planted(x, geo, dtype):
        calls.append(1)
        if len(calls) % 2:  # forward: the real one
            return real(x, geo, dtype)
        wide = geo._replace(fw=geo.fw + 1)
        z = real(x, wide, dtype).view(geo.fh, geo.fw + 1, *x.shape[:0], -1)[:, : geo.fw]
        return z.reshape(geo.fh * geo.fw, (x.shape[0] + 1) // 2, x.shape[1])

    layer, x = convnorm_pair(CONVNORM_CASES[0], seed=3)
    monkeypatch.setattr(convnorm_fourier, "RECOMPUTE_INPUT_SPECTRUM", False)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    old = run_both(layer, x, lambda m, t: m(t), lambda m, t: m(t))[0]
    monkeypatch.setattr(convnorm_fourier, "RECOMPUTE_INPUT_SPECTRUM", True)
    monkeypatch.setattr(convnorm_fourier, "input_spectrum", planted)
    layer.load_state_dict(state)
    new = run_both(layer, x, lambda m, t: m(t), lambda m, t: m(t))[0]
    assert calls
    with pytest.raises(AssertionError, match="weight|tensor 2"):
        for i, (a, b) in enumerate(zip(new, old)):
            assert_close_rel(a, b, f"tensor {i}")


@pytest.mark.parametrize("n", [4, 5])
@pytest.mark.parametrize("step,grid", [((1, 1), (10, 11)), ((2, 2), (17, 17)), ((1, 1), (8, 8))])
@pytest.mark.parametrize("conjugate", [True, False])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_convnorm_packing_is_bit_identical_to_the_old_one(n, step, grid, conjugate, dtype):
    x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(n))
    new = convnorm_fourier._pack(x, grid, step, dtype, conjugate)
    assert torch.equal(new, old_pack(x, grid, step, dtype, conjugate))
    # The zero border is part of the value (an unzeroed empty grid would differ).
    (sh, sw) = step
    assert not new[..., sh * 8:, :].any() and not new[..., :, sw * 8:].any()


def test_old_vs_new_benchmark_runs_every_variant_and_restores_the_new_paths(capsys, monkeypatch):
    from benchmarks import old_vs_new

    new_pack, new_forward = convnorm_fourier._pack, CayleyConv2d.forward
    calls = []
    real_strided = old_vs_new.strided_product
    monkeypatch.setattr(old_vs_new, "VARIANTS", dict(old_vs_new.VARIANTS))
    old_vs_new.VARIANTS["cayley (before issue 24: and the strided matmul)"] = (
        "cayley", (old_vs_new.old_forward(lambda q, xf: calls.append(1) or real_strided(q, xf), False),))
    assert old_vs_new.main(["--width", "0.0625", "--batch", "2", "--size", "8", "--steps", "1",
                            "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for label in old_vs_new.VARIANTS:
        assert f"| {label} |" in out
    assert calls, "the 'before' Cayley variant did not run the old formula"
    assert convnorm_fourier._pack is new_pack and CayleyConv2d.forward is new_forward
    assert convnorm_fourier.RECOMPUTE_INPUT_SPECTRUM is False and fourier_product.RECOMPUTE_SPECTRUM is True
