"""ConvNorm against a from-scratch transcription of the official layer's
arithmetic (the paper's public code, its preconditioned conv): the bias inside
the full convolution, the running filter started from zero with its counter
incremented before use, nn.Conv2d's default initialisation of the affine
conv; and the circular mode on inputs smaller than the kernel against an
explicit circular operator. Both paths, fp64, on tiny shapes."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from operators import explicit_operator
from robustbench_convnorm.normalizers import get_normalizer
from robustbench_convnorm.normalizers.convnorm import ConvNorm2d

PATHS = pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])


class OfficialArithmetic:
    """The official layer's forward, written out: full convolution (padding
    k-1, stride 1, bias included), V from the zero-padded kernel's rfft2 (1x1:
    the channel norms), no epsilon, crop k-1-padding, subsample, depthwise
    affine conv. Training passes use the exact V and update the running one,
    which starts as zeros; the counter is incremented before f is taken."""

    def __init__(self, stride, padding, ramp_steps):
        self.stride, self.padding, self.ramp_steps = stride, padding, ramp_steps
        self.count = 0
        self.running = torch.zeros(1, dtype=torch.float64)

    def forward(self, x, weight, bias, affine_weight, affine_bias, training):
        k = weight.shape[-1]
        full = F.conv2d(x, weight, bias, 1, k - 1)
        if k == 1:
            v = (weight ** 2).sum(dim=1)  # (C_out, 1, 1)
            v = self._running(v ** -0.5, training)
            out = v * full
        else:
            fh, fw = full.shape[-2:]
            if training:
                spectrum = torch.fft.rfft2(F.pad(weight, [0, fw - k, 0, fh - k]))
                v = (spectrum.real ** 2 + spectrum.imag ** 2).sum(dim=1) ** -0.5
            v = self._running(v if training else None, training)
            out = torch.fft.irfft2(torch.fft.rfft2(full) * v, s=(fh, fw))
        c = k - 1 - self.padding
        if c:
            out = out[..., c:-c, c:-c]
        if self.stride > 1:
            out = out[..., ::self.stride, ::self.stride]
        if affine_weight is not None:
            ka = affine_weight.shape[-1]
            out = F.conv2d(out, affine_weight, affine_bias, padding=(ka - 1) // 2, groups=out.shape[1])
        return out

    def _running(self, v, training):
        if not training:
            return self.running
        self.count += 1
        f = max(0.5 * (math.cos(math.pi * min(self.count, self.ramp_steps) / self.ramp_steps) + 1), 1e-2)
        self.running = f * v + (1 - f) * self.running
        return v


def _official_layer(c_in, c_out, k, stride, padding, ramp_steps, *, bias=True, affine=True):
    return ConvNorm2d(c_in, c_out, k, stride, padding, bias=bias, affine=affine, eps=0.0,
                      ramp_steps=ramp_steps).double()


def _replay(layer, official, x, steps, generator):
    """Training passes with the weights moved in between (as an optimizer
    would), then an evaluation pass; yields (ours, official) outputs."""
    params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    if layer.affine is not None:
        params += [layer.affine.weight, layer.affine.bias]
    for step in range(steps + 1):
        training = step < steps
        layer.train(training)
        with torch.no_grad():
            ours = layer(x)
        aw, ab = (layer.affine.weight, layer.affine.bias) if layer.affine is not None else (None, None)
        theirs = official.forward(x, layer.weight.detach(), None if layer.bias is None else layer.bias.detach(),
                                  aw, ab, training)
        yield ours, theirs
        with torch.no_grad():
            for p in params:
                p.add_(0.2 * torch.randn(p.shape, generator=generator, dtype=p.dtype))


@PATHS
@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (3, 1, 0), (5, 2, 2), (1, 2, 0)])
def test_training_and_evaluation_match_the_official_arithmetic(k, stride, padding, fast):
    layer = _official_layer(2, 3, k, stride, padding, ramp_steps=4)
    layer.fast_path = fast
    official = OfficialArithmetic(stride, padding, ramp_steps=4)
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    for ours, theirs in _replay(layer, official, x, 6, torch.Generator().manual_seed(0)):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12 * float(theirs.detach().abs().max()))
    # The running filter itself, on the official grid.
    running = official.running if k > 1 else official.running.view(-1, 1, 1)
    torch.testing.assert_close(layer.running_filter, running, rtol=1e-12, atol=0)
    assert int(layer.num_steps) == official.count == 6


@PATHS
def test_ramp_down_at_the_official_length_starts_from_zero(fast):
    # N = 40000: after one pass the official average holds f(1) V with
    # f(1) = 1 - 1.5e-9, not V; after three, f counted from 1.
    layer = _official_layer(2, 3, 3, 1, 1, ramp_steps=40000, bias=False, affine=False)
    layer.fast_path = fast
    official = OfficialArithmetic(1, 1, ramp_steps=40000)
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    replay = _replay(layer, official, x, 3, torch.Generator().manual_seed(1))
    next(replay)
    f1 = 0.5 * (1 + math.cos(math.pi / 40000))
    torch.testing.assert_close(layer.running_filter, f1 * layer.exact_filter(6, 6), rtol=1e-14, atol=0)
    assert not torch.allclose(layer.running_filter, layer.exact_filter(6, 6), rtol=1e-12, atol=0)
    for ours, theirs in replay:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12 * float(theirs.detach().abs().max()))
    torch.testing.assert_close(layer.running_filter, official.running, rtol=1e-13, atol=0)


@PATHS
@pytest.mark.parametrize("k,stride,padding,mode", [(3, 2, 1, "zeros"), (1, 1, 0, "zeros"), (3, 1, 1, "circular")])
def test_bias_is_added_before_the_filter_and_scaled_by_its_zero_frequency(k, stride, padding, mode, fast):
    layer = ConvNorm2d(2, 3, k, stride, padding, bias=True, affine=False, padding_mode=mode,
                       ramp_steps=3).double()
    layer.fast_path = fast
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    for training in (True, True, False):  # exact V twice, then the running V
        layer.train(training)
        with torch.no_grad():
            v_zero = (layer.exact_filter(6, 6) if training else layer.current_filter(6, 6))[:, 0, 0]
        out = layer(x)
        unbiased = out - v_zero.view(1, -1, 1, 1) * layer.bias.view(1, -1, 1, 1)
        saved = layer.bias
        layer.bias = None  # the same layer without its bias, same filter
        reference = layer(x) if not training else None
        layer.bias = saved
        if reference is not None:
            torch.testing.assert_close(unbiased, reference, rtol=0, atol=1e-12)
        # The bias is really scaled: V(0) is nowhere near 1 for these kernels.
        assert (v_zero - 1).abs().min() > 1e-3
        # Its gradient: V(0) times the summed output gradient, per channel.
        layer.bias.grad = None
        r = torch.randn_like(out)
        (out * r).sum().backward()
        torch.testing.assert_close(layer.bias.grad, v_zero * r.sum(dim=(0, 2, 3)), rtol=1e-12, atol=1e-12)


@PATHS
def test_bias_after_the_filter_is_an_option(fast):
    layer = ConvNorm2d(2, 3, 3, 1, 1, bias=True, affine=False, bias_placement="after_filter").double().eval()
    layer.fast_path = fast
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    out = layer(x)
    saved, layer.bias = layer.bias, None
    torch.testing.assert_close(out, layer(x) + saved.view(1, -1, 1, 1))
    with pytest.raises(ValueError, match="bias_placement"):
        get_normalizer("convnorm", bias_placement="inside")


def test_affine_starts_as_nn_conv2d_default_on_request_and_identity_by_default():
    normalizer = get_normalizer("convnorm", affine_init="conv_default")
    torch.manual_seed(7)
    layer = normalizer.conv(4, 6, 3, stride=2, padding=1)
    # The same random stream: the conv's kernel first, then nn.Conv2d's own draws.
    torch.manual_seed(7)
    kernel = torch.empty(6, 4, 3, 3)
    nn.init.kaiming_uniform_(kernel, a=math.sqrt(5))
    default = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=True)
    torch.testing.assert_close(layer.weight, kernel, rtol=0, atol=0)
    torch.testing.assert_close(layer.affine.weight, default.weight, rtol=0, atol=0)
    torch.testing.assert_close(layer.affine.bias, default.bias, rtol=0, atol=0)
    # Uniform in +-1/sqrt(fan_in) = +-1/3, and far from the identity.
    assert 0.2 < float(layer.affine.weight.detach().abs().max()) <= 1 / 3
    assert 0.1 < float(layer.affine.bias.detach().abs().max()) <= 1 / 3

    normalizer = get_normalizer("convnorm")
    torch.manual_seed(7)
    identity = normalizer.conv(4, 6, 3, stride=2, padding=1)
    torch.testing.assert_close(identity.weight, kernel, rtol=0, atol=0)  # the stream is unchanged
    delta = torch.zeros(6, 1, 3, 3)
    delta[:, 0, 1, 1] = 1.0
    torch.testing.assert_close(identity.affine.weight, delta, rtol=0, atol=0)
    assert float(identity.affine.bias.detach().abs().max()) == 0.0
    with pytest.raises(ValueError, match="affine_init"):
        get_normalizer("convnorm", affine_init="zeros")


# ------------------------------------------- circular mode on small inputs
def _numpy_circular_convnorm(x, weight, padding, eps):
    """The circular layer, one image (C_in, H, W): y_o = V_o * (sum_j a_oj (x) x_j)
    with the cross-correlation wrapped around the H x W grid, aligned like zero
    padding ``padding``, and V_o(w) = (sum_j |sum_u a_oj[u] e^{-i w.u}|^2 + eps)^-1/2
    evaluated at the grid's frequencies (a kernel larger than the grid aliases)."""
    c_out, c_in, k, _ = weight.shape
    _, h, w = x.shape
    conv = np.zeros((c_out, h, w))
    for o in range(c_out):
        for j in range(c_in):
            for u in range(k):
                for t in range(k):
                    conv[o] += weight[o, j, u, t] * np.roll(x[j], (padding - u, padding - t), axis=(0, 1))
    fr = np.arange(h).reshape(h, 1, 1, 1)
    fc = np.arange(w).reshape(1, w, 1, 1)
    taps_r = np.arange(k).reshape(1, 1, k, 1)
    taps_c = np.arange(k).reshape(1, 1, 1, k)
    phase = np.exp(-2j * np.pi * (fr * taps_r / h + fc * taps_c / w))  # (h, w, k, k)
    spectrum = np.einsum("hwuv,ojuv->ojhw", phase, weight)
    v = (np.sum(np.abs(spectrum) ** 2, axis=1) + eps) ** -0.5
    return np.real(np.fft.ifft2(np.fft.fft2(conv) * v))


@pytest.mark.parametrize("k,padding,size", [(5, 0, 3), (5, 2, 3), (7, 3, 2), (3, 1, 2)])
def test_circular_mode_on_inputs_smaller_than_the_kernel(k, padding, size):
    layer = ConvNorm2d(2, 3, k, 1, padding, affine=False, padding_mode="circular", eps=1e-14).double().eval()
    weight = layer.weight.detach().numpy()
    basis = np.eye(2 * size * size).reshape(-1, 2, size, size)
    expected = np.stack([_numpy_circular_convnorm(b, weight, padding, layer.eps).ravel() for b in basis]).T
    operators = {}
    for fast in (False, True):
        layer.fast_path = fast
        operators[fast] = explicit_operator(layer, (2, size, size))
        np.testing.assert_allclose(operators[fast].numpy(), expected, rtol=0, atol=1e-12)
    # Each channel of the wrapped layer is still a tight frame: Q_k Q_k^T = I.
    for q_k in operators[False].reshape(3, size * size, -1):
        torch.testing.assert_close(q_k @ q_k.T, torch.eye(size * size, dtype=q_k.dtype), rtol=0, atol=1e-5)
