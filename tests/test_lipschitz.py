"""Spectral norms and bounds of conv layers (robustbench_convnorm.lipschitz),
checked against the dense SVD of explicit operator matrices (tests/operators.py)
and against the TN paper's facts: exact <= TN <= F4 <= flat, and its sanity
numbers for a random 8x6x3x3 kernel."""
import math

import pytest
import torch
from torch import nn

from robustbench_convnorm import lipschitz as lip
from robustbench_convnorm.lipschitz import probes, spectra
from robustbench_convnorm.normalizers import get_normalizer

from operators import explicit_operator, singular_values

DT = torch.float64


def circular_conv(c_in, c_out, k, stride, weight=None):
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, bias=False,
                     padding_mode="circular").to(DT)
    if weight is not None:
        conv.weight.data.copy_(weight)
    return conv


def random_kernel(gen, shape, dist):
    if dist == "normal":
        return torch.randn(shape, generator=gen, dtype=DT)
    if dist == "uniform":
        return torch.rand(shape, generator=gen, dtype=DT) - 0.3
    return torch.randn(shape, generator=gen, dtype=DT) ** 3  # heavy-tailed


# --------------------------------------------------------------- exact values

@pytest.mark.parametrize("c_out,c_in,k,n,stride", [
    (4, 3, 3, 8, 1), (3, 4, 3, 8, 2), (2, 3, 5, 6, 2), (3, 2, 2, 8, 2), (3, 2, 3, 9, 3),
    (2, 2, 5, 4, 1),  # kernel larger than the grid: wraps around
    (5, 2, 1, 6, 2),
])
def test_exact_singular_values_equal_dense_svd_of_circular_conv(c_out, c_in, k, n, stride):
    conv = circular_conv(c_in, c_out, k, stride)
    dense = singular_values(explicit_operator(conv, (c_in, n, n)))
    exact = lip.circular_singular_values(conv.weight, n, stride)
    assert exact.shape == dense.shape
    torch.testing.assert_close(exact, dense, rtol=1e-9, atol=1e-9)
    assert lip.circular_spectral_norm(conv.weight, n, stride) == pytest.approx(float(dense[0]), rel=1e-9)


def test_exact_in_frequency_blocks_equals_one_block(monkeypatch):
    w = torch.randn(3, 2, 3, 3, dtype=DT)
    whole = (lip.circular_singular_values(w, 8, 2), lip.circular_spectral_norm(w, 8), lip.weight_channel_spectrum(w, 8))
    monkeypatch.setattr(spectra, "_EXACT_BLOCK", 3 * 2 * 4)  # one frequency row per block
    torch.testing.assert_close(lip.circular_singular_values(w, 8, 2), whole[0], rtol=1e-12, atol=1e-12)
    assert lip.circular_spectral_norm(w, 8) == pytest.approx(whole[1], rel=1e-12)
    torch.testing.assert_close(lip.weight_channel_spectrum(w, 8), whole[2], rtol=1e-12, atol=1e-12)


def test_exact_rejects_input_not_divisible_by_stride():
    with pytest.raises(ValueError, match="multiple of the stride"):
        lip.circular_spectral_norm(torch.randn(2, 2, 3, 3), 7, 2)


# ------------------------------------------------------------ power iteration

@pytest.mark.parametrize("stride", [1, 2])
def test_power_iteration_matches_exact_on_circular_layers(stride):
    conv = circular_conv(3, 4, 3, stride)
    exact = lip.circular_spectral_norm(conv.weight, 8, stride)
    est = lip.layer_spectral_norm(conv, (3, 8, 8), n_iter=3000, tol=1e-13)
    assert est == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("k,stride,padding,n", [(3, 2, 1, 8), (3, 1, 0, 7), (5, 2, 2, 9), (4, 2, 1, 8), (1, 2, 0, 6)])
def test_power_iteration_matches_dense_svd_on_zero_padded_layers(k, stride, padding, n):
    conv = nn.Conv2d(3, 4, k, stride=stride, padding=padding, bias=False).to(DT)
    dense = float(singular_values(explicit_operator(conv, (3, n, n)))[0])
    est = lip.layer_spectral_norm(conv, (3, n, n), n_iter=3000, tol=1e-13)
    assert est == pytest.approx(dense, rel=1e-6)
    assert est <= dense * (1 + 1e-9)  # a power-iteration estimate never overshoots


def test_power_iteration_ignores_bias_and_leaves_the_layer_as_it_was():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True).to(DT)
    layer = nn.Sequential(conv, nn.BatchNorm2d(4).to(DT))
    layer[1].running_mean.uniform_(-1, 1)
    layer[1].running_var.uniform_(0.5, 2)
    layer[1].bias.data.uniform_(-1, 1)
    layer.train()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    # eval-mode operator: conv then a per-channel scale; its matrix from the
    # bias-free pieces
    scale = (layer[1].weight / torch.sqrt(layer[1].running_var + layer[1].eps)).detach()
    plain = nn.Conv2d(3, 4, 3, padding=1, bias=False).to(DT)
    plain.weight.data = conv.weight.data * scale.view(-1, 1, 1, 1)
    dense = float(singular_values(explicit_operator(plain, (3, 6, 6)))[0])
    est = lip.layer_spectral_norm(layer, (3, 6, 6), n_iter=3000, tol=1e-13)
    assert est == pytest.approx(dense, rel=1e-6)
    assert layer.training and layer[1].training
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------- ordering

@pytest.mark.parametrize("stride", [1, 2])
def test_ordering_exact_tn_f4_flat_on_random_kernels(stride):
    gen = torch.Generator().manual_seed(10 + stride)
    strict_tn_f4 = 0
    cases = 0
    for trial in range(24):
        c_out, c_in = (int(v) for v in torch.randint(1, 9, (2,), generator=gen))
        k = int(torch.randint(1, 6, (1,), generator=gen))
        w = random_kernel(gen, (c_out, c_in, k, k), ("normal", "uniform", "heavy")[trial % 3])
        exact = max(lip.circular_spectral_norm(w, n, stride) for n in (8, 16))
        tn = lip.tn_bound(w, stride)
        f4 = lip.f4_bound(w, stride)
        flat = lip.flat_bound(w, stride)
        assert exact <= tn * (1 + 1e-6), (trial, exact, tn)
        assert tn <= f4 * (1 + 1e-6), (trial, tn, f4)
        assert f4 <= flat * (1 + 1e-12), (trial, f4, flat)
        cases += 1
        strict_tn_f4 += tn < 0.99 * f4
        # the TN bound holds for zero padding too (any padding)
        for padding in {0, (k - 1) // 2, k - 1}:
            conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, bias=False).to(DT)
            conv.weight.data.copy_(w)
            n = 6
            if (n + 2 * padding - k) < 0:
                continue
            dense = float(singular_values(explicit_operator(conv, (c_in, n, n)))[0])
            assert dense <= tn * (1 + 1e-6), (trial, padding, dense, tn)
    # TN is genuinely tighter than F4 on most of these kernels
    assert strict_tn_f4 >= cases // 2


def test_reference_sanity_magnitudes():
    """The TN paper's sanity numbers: random 8x6x3x3 kernel, n=16: exact 13.79, TN 16.39,
    F4 22.02, sqrt(9)*||W_flat|| 24.99. The kernel's distribution is unknown,
    so check the ordering and the ratios to the flat bound (0.552, 0.656,
    0.881) over i.i.d. normal kernels."""
    gen = torch.Generator().manual_seed(3)
    ratios = {"exact": [], "tn": [], "f4": []}
    for _ in range(16):
        w = torch.randn(8, 6, 3, 3, generator=gen, dtype=DT)
        exact, tn = lip.circular_spectral_norm(w, 16), lip.tn_bound(w)
        f4, flat = lip.f4_bound(w), lip.flat_bound(w)
        assert exact < tn < f4 < flat
        assert 15 < flat < 45  # same order of size as 24.99
        for key, v in (("exact", exact), ("tn", tn), ("f4", f4)):
            ratios[key].append(v / flat)
    mean = {k: sum(v) / len(v) for k, v in ratios.items()}
    ref = {"exact": 13.79 / 24.99, "tn": 16.39 / 24.99, "f4": 22.02 / 24.99}
    for key in ref:
        assert mean[key] == pytest.approx(ref[key], abs=0.04), (key, mean[key], ref[key])
    # TN sits between exact and F4 as in the reference (16.39/13.79 = 1.19)
    assert 1.08 < mean["tn"] / mean["exact"] < 1.30


def test_f4_and_flat_on_a_hand_computed_kernel():
    # C_out = C_in = 1, 2x2 kernel = identity: the (h x w) matricizations have
    # norm 1, the flat ones sqrt(2); F4 = 2 * 1, flat = 2 * sqrt(2), and the
    # conv's norm is max |1 + e^{i(w1+w2)}| = 2 = TN.
    w = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=DT)
    assert lip.f4_bound(w) == pytest.approx(2.0, rel=1e-12)
    assert lip.flat_bound(w) == pytest.approx(2 * math.sqrt(2), rel=1e-12)
    assert lip.tn_bound(w) == pytest.approx(2.0, rel=1e-7)
    assert lip.circular_spectral_norm(w, 8) == pytest.approx(2.0, rel=1e-12)


def test_tn_bound_needs_complex_vectors():
    # K[:, :, :, 0] = Re((e1 + i e2)^(x3)): its real spectral norm is 1, its
    # complex one sqrt(2); the conv's norm is 2 = sqrt(2) * sqrt(2). A bound
    # computed with real vectors (sqrt(2) * 1) would fall below the exact norm.
    z = torch.tensor([1.0, 1.0j], dtype=torch.complex128)
    w = torch.einsum("i,j,k->ijk", z, z, z).real.unsqueeze(-1)
    exact = max(lip.circular_spectral_norm(w, n) for n in (4, 8))
    assert exact == pytest.approx(2.0, rel=1e-12)
    assert lip.tn_bound(w) == pytest.approx(2.0, rel=1e-7)


def test_hopm_stops_at_a_stationary_point():
    gen = torch.Generator().manual_seed(2)
    t = torch.randn(5, 4, 3, 2, generator=gen, dtype=DT)
    sigma, (u1, u2, u3, u4) = lip.tensor_spectral_norm(t, n_iter=2000, tol=1e-15, generator=gen)
    tc = t.to(torch.complex128)
    assert abs(float(torch.einsum("abcd,a,b,c,d->", tc, u1, u2, u3, u4).abs()) - sigma) < 1e-10
    # each vector is the best one for the other three: |T(., u2, u3, u4)| = sigma, ...
    for partial in (torch.einsum("abcd,b,c,d->a", tc, u2, u3, u4), torch.einsum("abcd,a,c,d->b", tc, u1, u3, u4),
                    torch.einsum("abcd,a,b,d->c", tc, u1, u2, u4), torch.einsum("abcd,a,b,c->d", tc, u1, u2, u3)):
        assert float(torch.linalg.vector_norm(partial)) == pytest.approx(sigma, rel=1e-7)
    # a rank-one tensor's spectral norm is the product of its factors' norms
    f = [torch.randn(d, generator=gen, dtype=DT) for d in (3, 4, 2, 2)]
    rank1 = torch.einsum("a,b,c,d->abcd", *f)
    want = math.prod(float(torch.linalg.vector_norm(v)) for v in f)
    assert lip.tensor_spectral_norm(rank1)[0] == pytest.approx(want, rel=1e-9)


def test_tn_scale_uses_the_strided_kernel_size():
    # a 2x2 kernel at stride 2 touches disjoint 2x2 blocks: the conv's norm is
    # ||w||_2, and K' is (1, 4, 1, 1), so TN = 1 * ||w||_2 (sqrt(h'w') = 1)
    w = torch.tensor([[[[1.0, 2.0], [-3.0, 0.5]]]], dtype=DT)
    conv = nn.Conv2d(1, 1, 2, stride=2, bias=False).to(DT)
    conv.weight.data.copy_(w)
    dense = float(singular_values(explicit_operator(conv, (1, 6, 6)))[0])
    norm = float(torch.linalg.vector_norm(w))
    assert dense == pytest.approx(norm, rel=1e-12)
    assert lip.tn_bound(w, 2) == pytest.approx(norm, rel=1e-7)
    assert lip.f4_bound(w, 2) == pytest.approx(norm, rel=1e-12)
    assert lip.flat_bound(w, 2) == pytest.approx(norm, rel=1e-12)


def test_strided_reshape_is_the_polyphase_kernel():
    w = torch.arange(2 * 3 * 3 * 3, dtype=DT).reshape(2, 3, 3, 3)
    k = lip.reshape_strided_kernel(w, 2)
    assert k.shape == (2, 12, 2, 2)
    # K'[o, (c, a, b), p, q] = K[o, c, 2p + a, 2q + b], zero beyond the kernel
    for c in range(3):
        for a in range(2):
            for b in range(2):
                for p in range(2):
                    for q in range(2):
                        i, j = 2 * p + a, 2 * q + b
                        want = w[1, c, i, j] if i < 3 and j < 3 else 0.0
                        assert k[1, c * 4 + a * 2 + b, p, q] == want


def test_tn_bound_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=DT).requires_grad_(True)
    value = lip.tn_bound(w, 2, differentiable=True, generator=torch.Generator().manual_seed(0))
    assert float(value.detach()) == pytest.approx(lip.tn_bound(w.detach(), 2), rel=1e-6)
    (grad,) = torch.autograd.grad(value, w)
    d = torch.randn(w.shape, generator=gen, dtype=DT)
    eps = 1e-5
    up = lip.tn_bound(w.detach() + eps * d, 2, n_iter=400, tol=1e-14)
    down = lip.tn_bound(w.detach() - eps * d, 2, n_iter=400, tol=1e-14)
    assert float((grad * d).sum()) == pytest.approx((up - down) / (2 * eps), rel=1e-3)


def test_tn_bound_does_not_depend_on_input_size_but_exact_does():
    w = torch.randn(4, 4, 3, 3, dtype=DT)
    a = lip.tn_bound(w, generator=torch.Generator().manual_seed(1))
    b = lip.tn_bound(w, generator=torch.Generator().manual_seed(1))
    assert a == b
    e4, e32 = lip.circular_spectral_norm(w, 4), lip.circular_spectral_norm(w, 32)
    assert e4 <= e32 * (1 + 1e-12) <= a * (1 + 1e-6)


# -------------------------------------------------------- condition numbers

def test_weight_channel_condition_on_hand_computed_kernels():
    w = torch.zeros(3, 2, 1, 2, dtype=DT)
    w[0, 0, 0] = torch.tensor([2.0, 1.0])   # |2 + e^{iw}| in [1, 3]: cond 3
    w[1, 1, 0, 0] = 5.0                     # a delta: flat spectrum, cond 1
    w[2, 0, 0] = torch.tensor([1.0, 1.0])   # a zero at w = pi: clamped to 1e6
    cond = lip.weight_channel_condition(w, 8)
    assert cond[0] == pytest.approx(3.0, rel=1e-12)
    assert cond[1] == pytest.approx(1.0, rel=1e-12)
    assert cond[2] == pytest.approx(1e6, rel=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
def test_layer_channel_condition_equals_dense_per_channel_svd(stride):
    conv = circular_conv(3, 4, 3, stride)
    n = 8
    matrix = explicit_operator(conv, (3, n, n))
    m = (n // stride) ** 2
    cond = lip.layer_channel_condition(conv, (3, n, n))
    for k in range(4):
        sv = singular_values(matrix[k * m:(k + 1) * m])
        assert float(cond[k]) == pytest.approx(float(sv[0] / sv[-1]), rel=1e-8)
    # the kernel-based computation (polyphase at stride 2) agrees
    torch.testing.assert_close(cond, lip.weight_channel_condition(conv.weight, n, stride), rtol=1e-9, atol=0)


def test_layer_channel_spectrum_in_chunks_equals_one_batch(monkeypatch):
    conv = nn.Conv2d(3, 5, 3, padding=1, stride=2, bias=False).to(DT)
    whole = lip.layer_channel_spectrum(conv, (3, 8, 8))
    monkeypatch.setattr(probes, "_PROBE_BLOCK", 2 * 3 * 8 * 8)  # two channels per batch
    torch.testing.assert_close(lip.layer_channel_spectrum(conv, (3, 8, 8)), whole, rtol=0, atol=0)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (2, 0)])
def test_layer_channel_condition_on_zero_padded_conv_matches_weight_definition(stride, padding):
    conv = nn.Conv2d(3, 5, 3, padding=padding, stride=stride, bias=False).to(DT)
    torch.testing.assert_close(lip.layer_channel_condition(conv, (3, 10, 10)),
                               lip.weight_channel_condition(conv.weight, 10, stride), rtol=1e-9, atol=0)


# ------------------------------------------------- every registered normalizer

@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", sorted(__import__("robustbench_convnorm.normalizers", fromlist=["x"]).list_normalizers()))
def test_power_iteration_on_every_normalizer_layer_matches_its_dense_operator(name, stride):
    """The power column is the norm of the layer's actual operator: ConvNorm's
    filter, Cayley's Q, SN's and ONI's normalized weights included."""
    torch.manual_seed(0)
    layer = get_normalizer(name).conv(3, 4, 3, stride=stride, padding=1)
    layer.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics, where a layer keeps them
            layer(torch.randn(4, 3, 8, 8))
    layer.eval()
    with torch.no_grad():
        zero = layer(torch.zeros(1, 3, 8, 8))
        dense = explicit_operator(lambda x: layer(x) - zero, (3, 8, 8), dtype=torch.float32)
    want = float(singular_values(dense)[0])
    assert lip.layer_spectral_norm(layer, (3, 8, 8), n_iter=2000, tol=1e-9) == pytest.approx(want, rel=2e-4)
