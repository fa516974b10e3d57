"""Building blocks of ConvNorm's plain path (``convnorm.py``): the kernel's
spectrum on the method's grid, the filtering step with its hand-written
backward, circular padding of any width, and dtype rules; and the 2-D
transpose of spectra that ConvNorm's fast path and the Fourier product of
Cayley and LOT share."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def pair(value) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def fft_dtype(dtype: torch.dtype) -> torch.dtype:
    """FFTs run in fp64 for fp64 tensors and in fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype autocast gives F.conv2d(x, ...), or None where it leaves x alone."""
    device = x.device.type
    try:
        enabled = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device)
    except TypeError:  # torch < 2.4
        enabled = torch.is_autocast_cpu_enabled() if device == "cpu" else torch.is_autocast_enabled()
        dtype = torch.get_autocast_cpu_dtype() if device == "cpu" else torch.get_autocast_gpu_dtype()
    return dtype if enabled and x.dtype in (torch.float32, torch.float16, torch.bfloat16) else None


def transpose2d(z: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Contiguous complex z seen as (rows, cols) -> contiguous (cols, rows).
    complex64 is moved as float64 words: torch copies 2-D transposes of those
    in cache blocks, ~3-5x faster than a complex permute."""
    if z.dtype == torch.complex64:
        return z.view(torch.float64).view(rows, cols).t().contiguous().view(torch.complex64)
    w = torch.view_as_real(z).reshape(rows, cols, 2).transpose(0, 1).contiguous()
    return torch.view_as_complex(w)


def _fold(weight: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Sum the taps of ``weight`` along ``dim`` modulo ``size`` (circular aliasing)."""
    k = weight.shape[dim]
    if k <= size:
        return weight
    pad = (-k) % size
    if pad:
        widths = [0, 0] * (weight.dim() - 1 - (dim % weight.dim())) + [0, pad]
        weight = F.pad(weight, widths)
    shape = list(weight.shape)
    d = dim % weight.dim()
    shape[d:d + 1] = [shape[d] // size, size]
    return weight.reshape(shape).sum(dim=d)


def kernel_rfft2(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """rfft2 of ``weight`` (..., kh, kw) as the kernel of a circular convolution
    on a (height, width) grid: zero-padded bottom/right, or, where the kernel
    is larger than the grid, with its taps folded (aliased) modulo the grid."""
    weight = _fold(_fold(weight, height, -2), width, -1)
    return torch.fft.rfft2(weight, s=(height, width))


def circular_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Pad the last two dims by wrapping around, any number of times: F.pad's
    circular mode (one copy, the fast path) where the padding fits, that is
    wraps at most once; two index_selects on inputs smaller than the padding
    (a 5x5 kernel on a 3x3 input), where F.pad fails."""
    h, w = x.shape[-2:]
    if x.dim() in (3, 4) and min(top, bottom, left, right) >= 0 and max(top, bottom) <= h and max(left, right) <= w:
        return F.pad(x, (left, right, top, bottom), mode="circular")
    return _circular_pad_index(x, top, bottom, left, right)


def _circular_pad_index(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """``circular_pad`` by index_select, for any padding. Columns first, then
    rows: the backward then sums a gradient's wrapped copies in F.pad's order
    (rows, then columns), so where the padding fits the two agree bit for bit
    (values always; gradients where no element is copied to both sides)."""
    h, w = x.shape[-2:]
    rows = torch.arange(-top, h + bottom, device=x.device) % h
    cols = torch.arange(-left, w + right, device=x.device) % w
    return x.index_select(-1, cols).index_select(-2, rows)


def _filter(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Circular filtering of y (..., fh, fw) by the real filter v (rfft2 layout)."""
    fh, fw = y.shape[-2:]
    return torch.fft.irfft2(torch.fft.rfft2(y, s=(fh, fw)) * v, s=(fh, fw))


class SymmetricFourierFilter(torch.autograd.Function):
    """``_filter`` with a hand-written backward. V is real and even
    (V(-w) = V(w): it depends on |a_hat(w)| only), so the circulant operator
    is symmetric and its adjoint is the same filtering: backward filters the
    incoming gradient by V. Nothing but V is saved, where autograd through
    rfft2 would keep the whole full-size conv output alive until backward."""

    @staticmethod
    def forward(ctx, y, v):
        ctx.save_for_backward(v)
        return _filter(y, v)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return _filter(grad, v), None
