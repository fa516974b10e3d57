"""Cayley orthogonal convolution: the explicit operator's SVD, norm
preservation, a numpy evaluation of the Cayley transform per frequency, and
the cache of Q."""
import io

import numpy as np
import pytest
import torch

from operators import explicit_operator, singular_values
from robustbench_convnorm.normalizers import get_normalizer
from robustbench_convnorm.normalizers import cayley as cayley_module
from robustbench_convnorm.normalizers.cayley import CayleyConv2d


def _layer(c_in, c_out, k, stride=1):
    return get_normalizer("cayley").conv(c_in, c_out, k, stride=stride, padding=(k - 1) // 2).double().eval()


def test_square_case_all_singular_values_one():
    layer = _layer(4, 4, 3)
    with torch.no_grad():
        layer.alpha.mul_(3.0)  # any alpha: still orthogonal
    m = explicit_operator(layer, (4, 6, 6))
    sv = singular_values(m)
    assert sv.shape[0] == 4 * 36
    assert torch.allclose(sv, torch.ones_like(sv), atol=1e-10)


@pytest.mark.parametrize("c_in,c_out,k,stride,kind", [
    (3, 5, 3, 1, "isometry"),      # tall: orthonormal columns
    (5, 3, 3, 1, "coisometry"),    # wide: orthonormal rows
    (2, 8, 3, 2, "orthogonal"),    # stride 2: 4*2 = 8 channels after space-to-depth
    (2, 4, 3, 2, "coisometry"),    # ResNet's downsampling conv: 8 -> 4 channels
    (2, 4, 1, 2, "coisometry"),    # ResNet's 1x1 shortcut
    (3, 6, 1, 1, "isometry"),
])
def test_strided_and_non_square_cases_are_orthogonal_as_the_shape_allows(c_in, c_out, k, stride, kind):
    n = 6
    layer = _layer(c_in, c_out, k, stride)
    m = explicit_operator(layer, (c_in, n, n))
    assert m.shape == (c_out * (n // stride) ** 2, c_in * n * n)
    if kind in ("isometry", "orthogonal"):
        torch.testing.assert_close(m.T @ m, torch.eye(m.shape[1], dtype=m.dtype), atol=1e-10, rtol=0)
    if kind in ("coisometry", "orthogonal"):
        torch.testing.assert_close(m @ m.T, torch.eye(m.shape[0], dtype=m.dtype), atol=1e-10, rtol=0)


@pytest.mark.parametrize("training", [True, False])
def test_preserves_the_norm_of_random_inputs(training):
    layer = get_normalizer("cayley").conv(8, 8, 3, padding=1).train(training)
    x = torch.randn(5, 8, 16, 16)
    y = layer(x)
    torch.testing.assert_close(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-5, atol=0)
    tall = get_normalizer("cayley").conv(4, 8, 3, padding=1).train(training)
    x = torch.randn(5, 4, 16, 16)
    torch.testing.assert_close(tall(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-5, atol=0)


def test_equals_a_numpy_cayley_transform_per_frequency():
    c, n, k = 3, 5, 3
    layer = _layer(c, c, k)
    w = layer.weight.detach().numpy()
    alpha = float(layer.alpha.detach())
    x = torch.randn(2, c, n, n, dtype=torch.float64)
    # Transfer matrices of the centred circular cross-correlation y[i] = sum_m w[m] x[i+m-1].
    shifts = np.arange(k) - (k - 1) // 2
    f = np.arange(n)
    phase = np.exp(2j * np.pi * np.outer(f, shifts) / n)               # (n, k)
    wf = np.einsum("am,bn,oimn->aboi", phase, phase, w)                # (n, n, c, c)
    a = alpha * wf / np.linalg.norm(w)
    a = a - np.conj(np.swapaxes(a, -1, -2))
    eye = np.eye(c)
    q = np.linalg.solve(eye + a, eye - a)
    xf = np.fft.fft2(x.numpy())                                        # (B, c, n, n)
    yf = np.einsum("aboi,ziab->zoab", q, xf)
    expected = np.real(np.fft.ifft2(yf))
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-9, atol=1e-10)


def test_is_a_circular_convolution():
    layer = _layer(3, 3, 3)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    shifted = torch.roll(x, shifts=(3, -2), dims=(2, 3))
    torch.testing.assert_close(layer(shifted), torch.roll(layer(x), shifts=(3, -2), dims=(2, 3)))
    assert "circular" in cayley_module.__doc__.lower() and "circular" in CayleyConv2d.__doc__.lower()


def test_alpha_is_a_parameter_from_construction_and_learns():
    layer = get_normalizer("cayley").conv(4, 4, 3, padding=1)
    assert "alpha" in dict(layer.named_parameters())
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)  # built before any forward
    before = layer.alpha.detach().clone()
    x = torch.randn(2, 4, 8, 8)
    target = torch.randn(2, 4, 8, 8)
    (layer(x) - target).square().sum().backward()
    assert layer.alpha.grad is not None and layer.alpha.grad.abs() > 0
    opt.step()
    assert not torch.equal(layer.alpha.detach(), before)


def test_q_is_cached_while_weights_do_not_change(monkeypatch):
    layer = get_normalizer("cayley").conv(4, 4, 3, padding=1)
    calls = []
    real = CayleyConv2d.orthogonal_matrices

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(CayleyConv2d, "orthogonal_matrices", counting)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    layer.train()
    train_out = layer(x)
    layer.eval()
    for _ in range(3):  # e.g. attack steps: input gradients, no weight change
        out = layer(x)
        (grad_x,) = torch.autograd.grad(out.square().sum(), x)
    assert len(calls) == 2  # one in training, one for all of evaluation
    torch.testing.assert_close(out, train_out)
    (grad_train,) = torch.autograd.grad(train_out.square().sum(), x)
    torch.testing.assert_close(grad_x, grad_train)  # input gradients stay exact

    # A weight update (in-place, as optimizers do) invalidates the cache.
    with torch.no_grad():
        layer.weight.add_(0.1)
    updated = layer(x)
    assert len(calls) == 3
    fresh = get_normalizer("cayley").conv(4, 4, 3, padding=1).eval()
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(updated, fresh(x))
    # So does loading a state dict, and another input size.
    buffer = io.BytesIO()
    torch.save(fresh.state_dict(), buffer)
    buffer.seek(0)
    layer.load_state_dict(torch.load(buffer, weights_only=True))
    layer(x)
    layer(torch.randn(1, 4, 6, 6))
    assert len(calls) == 6


def test_odd_size_with_stride_is_refused_clearly():
    layer = get_normalizer("cayley").conv(2, 4, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match="divisible"):
        layer(torch.randn(1, 2, 7, 7))
