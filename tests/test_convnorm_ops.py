"""convnorm_ops.circular_pad: F.pad's circular mode where the padding fits,
index_select where it does not (inputs smaller than the padding). Both
branches against each other and against numpy's wrap padding, values and
gradients."""
import numpy as np
import pytest
import torch

from robustbench_convnorm.normalizers import convnorm_ops
from robustbench_convnorm.normalizers.convnorm_ops import _circular_pad_index, circular_pad


def _np_wrap(x: torch.Tensor, top, bottom, left, right) -> np.ndarray:
    return np.pad(x.detach().numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)), mode="wrap")


def _np_wrap_grad(g: torch.Tensor, h, w, top, left) -> np.ndarray:
    """The adjoint of wrap padding: each padded position's gradient added to
    the input position it copies."""
    g = g.numpy()
    out = np.zeros(g.shape[:2] + (h, w), dtype=g.dtype)
    for i in range(g.shape[-2]):
        for j in range(g.shape[-1]):
            out[..., (i - top) % h, (j - left) % w] += g[..., i, j]
    return out


def _value_and_grad(pad, x, g, *widths):
    x = x.clone().requires_grad_(True)
    y = pad(x, *widths)
    (gx,) = torch.autograd.grad(y, x, g)
    return y.detach(), gx


# (h, w, top, bottom, left, right); each element copied at most once to each side: top + bottom <= h, left + right <= w
FITTING = [(7, 6, 2, 1, 3, 2), (8, 8, 1, 1, 1, 1), (5, 4, 0, 5, 4, 0), (4, 5, 3, 0, 0, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("h,w,top,bottom,left,right", FITTING)
def test_fitting_padding_both_branches_bit_identical(h, w, top, bottom, left, right, dtype):
    widths = (top, bottom, left, right)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, h, w, generator=gen) * 100).to(dtype)
    g = (torch.randn(2, 3, h + top + bottom, w + left + right, generator=gen) * 1e3).to(dtype)
    y_pad, g_pad = _value_and_grad(circular_pad, x, g, *widths)
    y_idx, g_idx = _value_and_grad(_circular_pad_index, x, g, *widths)
    assert torch.equal(y_pad, y_idx) and torch.equal(g_pad, g_idx)
    if dtype != torch.bfloat16:
        np.testing.assert_array_equal(y_pad.numpy(), _np_wrap(x, *widths))
        if dtype == torch.float64:
            np.testing.assert_allclose(g_pad.numpy(), _np_wrap_grad(g, h, w, top, left), rtol=1e-14)


def test_fitting_padding_takes_the_f_pad_branch(monkeypatch):
    calls = []
    monkeypatch.setattr(convnorm_ops, "_circular_pad_index", lambda *a: calls.append(a) or _circular_pad_index(*a))
    circular_pad(torch.zeros(1, 1, 4, 4), 4, 4, 4, 4)  # wraps exactly once: fits
    assert calls == []
    circular_pad(torch.zeros(1, 1, 4, 4), 5, 0, 0, 0)
    assert len(calls) == 1


# wraps more than once (the F.pad branch would fail), and the wrap-exactly-once edge
@pytest.mark.parametrize("h,w,top,bottom,left,right", [(3, 3, 2, 2, 2, 2), (3, 3, 5, 4, 3, 6), (2, 3, 1, 7, 4, 0),
                                                       (1, 1, 3, 3, 2, 2), (4, 4, 4, 4, 4, 4)])
def test_any_padding_against_numpy_wrap(h, w, top, bottom, left, right):
    widths = (top, bottom, left, right)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
    # integer-valued gradients: every sum is exact, whatever the order
    g = torch.randint(-1000, 1000, (2, 3, h + top + bottom, w + left + right), generator=gen).to(torch.float64)
    for pad in (circular_pad, _circular_pad_index):
        y, gx = _value_and_grad(pad, x, g, *widths)
        np.testing.assert_array_equal(y.numpy(), _np_wrap(x, *widths))
        np.testing.assert_array_equal(gx.numpy(), _np_wrap_grad(g, h, w, top, left))
