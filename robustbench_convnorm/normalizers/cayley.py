"""Orthogonal convolutions by the Cayley transform in the Fourier domain
(Trockman & Kolter, ICLR 2021).

This layer is a CIRCULAR convolution: it wraps around the image borders
(there is no zero padding; the ``padding`` argument is ignored, the kernel
is centred at offset (k-1)//2 as ``nn.Conv2d`` with padding (k-1)//2 would
be). On an H x W input the kernel's transform is taken at that size; for
every frequency w the complex C_out x C_in matrix W(w) becomes

    A(w) = skew(alpha * W(w) / ||w||_F),   Q(w) = (I + A)^-1 (I - A)

(with the tall/wide form of the Cayley transform when C_in != C_out), and
the output is ``irfft2(Q(w) rfft2(x)(w))`` (``fourier_product.py``: its
backward written by hand). Q(w) is unitary for a square
layer, an isometry (orthonormal columns) for C_out > C_in and a co-isometry
(orthonormal rows) for C_out < C_in, so the whole layer is orthogonal in
the same sense. Stride s is emulated by a space-to-depth rearrangement
(s*s times the input channels, an orthogonal permutation) followed by a
stride-1 layer of kernel size max(1, k // s); the input size must be a
multiple of s. Where that kernel is 1x1 (ResNet's 3x3 stride-2 convs and
1x1 shortcuts), Q(w) is one real matrix at every frequency, computed once
and applied as an s x s convolution of stride s (``_forward_pointwise``):
the same function without transforms.

``alpha`` is a parameter created in ``__init__`` (so the optimizer sees it),
initialised to the kernel's Frobenius norm; it is relative to ||w||_F
rather than to the norm of the kernel's FFT at the input size (the latter
is n * ||w||_F on an n x n full spectrum by Parseval), so it does not
depend on the input size.

Q is cached and reused while the weights do not change in evaluation mode
or under ``torch.no_grad()`` (attacks, evaluation), per input size and dtype;
``weight_cache.py`` says how a change of the weight or alpha is seen
(optimizer steps, fused ones included, in-place edits, new storage, edits
through ``.data``). ``train()`` drops it too. In evaluation mode the cached Q
is a constant: input gradients are exact, but no gradient reaches the weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Normalizer
from .convnorm_ops import pair
from .fourier_product import FourierProduct
from .registry import register_normalizer
from .weight_cache import ParameterCache


def cayley_transform(w: torch.Tensor) -> torch.Tensor:
    """Cayley transform of a batch of complex matrices (..., m, n): unitary
    for m == n, orthonormal columns for m > n (tall form), orthonormal rows
    for m < n (the tall form of the conjugate transpose)."""
    m, n = w.shape[-2:]
    if n > m:
        return cayley_transform(w.mH).mH
    return CayleyTransform.apply(w)


class CayleyTransform(torch.autograd.Function):
    """The tall (or square) Cayley transform, w = [u; v] (..., m, n), m >= n:

        A = u - u^H + v^H v,  M = (I + A)^-1,  Q = [(I - A) M; -2 v M],

    with its backward written by hand, so that it keeps M and Q (Q is what
    the layer's product keeps anyway) instead of the five matrix-sized
    tensors of autograd's graph. With P = Q + [I; 0], dQ = -P dA M - [0;
    2 dv M], hence for the gradient G = [G1; G2] of Q

        G_A = -(Q^H G + G1) M^H,  G_u = G_A - G_A^H,
        G_v = v (G_A + G_A^H) - 2 G2 M^H.

    The forward computes exactly what the autograd formula computed; the
    gradients equal autograd's up to rounding (tests/test_speed_equal.py)."""

    @staticmethod
    def forward(ctx, w):
        n = w.shape[-1]
        u, v = w[..., :n, :], w[..., n:, :]
        eye = torch.eye(n, dtype=w.dtype, device=w.device)
        a = u - u.mH + v.mH @ v
        inv = torch.linalg.inv(eye + a)
        # (I+A)^-1 (I-A) == (I-A)(I+A)^-1: both are functions of A.
        q = torch.cat([(eye - a) @ inv, -2.0 * (v @ inv)], dim=-2)
        ctx.save_for_backward(inv, q, v.clone() if v.shape[-2] else v)
        return q

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        inv, q, v = ctx.saved_tensors
        n = inv.shape[-1]
        grad_a = -((q.mH @ grad + grad[..., :n, :]) @ inv.mH)
        grad_u = grad_a - grad_a.mH
        if not v.shape[-2]:
            return grad_u
        grad_v = v @ (grad_a + grad_a.mH) - 2.0 * (grad[..., n:, :] @ inv.mH)
        return torch.cat([grad_u, grad_v], dim=-2)


def check_divisible(x: torch.Tensor, s: int) -> None:
    h, w = x.shape[-2:]
    if h % s or w % s:
        raise ValueError(f"cayley: stride {s} needs an input size divisible by {s}, got {h}x{w}")


def space_to_depth(x: torch.Tensor, s: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*s*s, H/s, W/s), a permutation of the entries:
    channel c*s*s + i*s + j holds the pixels at offset (i, j) of each s x s block."""
    check_divisible(x, s)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // s, s, w // s, s).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * s * s, h // s, w // s)


class CayleyConv2d(nn.Module):
    """Orthogonal convolution with circular boundaries (it wraps around the
    borders; ``padding`` is ignored). See the module docstring."""

    #: FFTs and batched complex solves: torch.compile leaves this layer eager (speed.py).
    compile_eager = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = False):
        super().__init__()
        sh, sw = pair(stride)
        if sh != sw or sh < 1:
            raise ValueError(f"cayley: needs equal positive strides, got {stride}")
        kh, kw = pair(kernel_size)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.stride = (sh, sw)
        self.padding = pair(padding)  # kept for reference only: the layer is circular
        # Space-to-depth for stride s: s*s more input channels, kernel max(1, k // s).
        self.kernel_size = (max(1, kh // sh), max(1, kw // sw))
        self.conv_in_channels = self.in_channels * sh * sw
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.conv_in_channels, *self.kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None
        # Created here (not lazily in the first forward) so that optimizers built
        # after the model include it; A = skew(alpha * W / ||w||_F) equals skew(W)
        # at initialisation.
        self.alpha = nn.Parameter(self.weight.detach().norm())
        self._cache = ParameterCache(type(self).__name__)

    # ------------------------------------------------------------------ Q
    def _kernel_transform(self, height: int, width: int, dtype: torch.dtype,
                          scale: torch.Tensor = None) -> torch.Tensor:
        """W(w) for w on the rfft2 grid: (height, width//2+1, C_out, C_in'),
        the transfer matrices of a circular cross-correlation centred at
        (k-1)//2, like nn.Conv2d with padding (k-1)//2; of ``scale`` times the
        kernel if given."""
        kh, kw = self.kernel_size
        ph, pw = (kh - 1) // 2, (kw - 1) // 2
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        dev = self.weight.device
        fh = torch.arange(height, device=dev, dtype=real)[:, None]
        fw = torch.arange(width // 2 + 1, device=dev, dtype=real)[:, None]
        th = torch.arange(kh, device=dev, dtype=real)[None, :] - ph
        tw = torch.arange(kw, device=dev, dtype=real)[None, :] - pw
        # y[i] = sum_m w[m] x[i + m - p]  =>  Y(f) = sum_m w[m] exp(+2 pi i f (m - p) / n) X(f)
        eh = torch.polar(torch.ones((), dtype=real, device=dev).expand(height, kh), 2 * math.pi * fh * th / height)
        ew = torch.polar(torch.ones((), dtype=real, device=dev).expand(width // 2 + 1, kw),
                         2 * math.pi * fw * tw / width)
        weight = self.weight if scale is None else self.weight.to(real) * scale
        return torch.einsum("am,bn,oimn->aboi", eh, ew, weight.to(dtype))

    def orthogonal_matrices(self, height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Q(w) for a stride-1 input grid of (height, width) (after
        space-to-depth): complex (height, width//2+1, C_out, C_in')."""
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        with torch.autocast(self.weight.device.type, enabled=False):
            real = torch.float64 if cdtype == torch.complex128 else torch.float32
            scale = self.alpha.to(real) / self.weight.to(real).norm()
            # The transform is linear: scaling the k x k taps first keeps no
            # spectrum-sized tensor for alpha's gradient (the product would).
            return cayley_transform(self._kernel_transform(height, width, cdtype, scale))

    def _q(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        cacheable = (not self.training) or (not torch.is_grad_enabled())
        if not cacheable:
            self._cache.clear()
            return self.orthogonal_matrices(height, width, dtype)
        parameters = tuple(p for p in (self.weight, self.alpha) if p is not None)  # LOT has no alpha
        return self._cache.lookup(parameters, (height, width, dtype),
                                  lambda: self.orthogonal_matrices(height, width, dtype))

    def clear_cache(self) -> None:
        """Drop the cached Q (the next forward recomputes it)."""
        self._cache.clear()

    def train(self, mode: bool = True):
        self._cache.clear()
        return super().train(mode)

    def _saw_grid(self, height: int, width: int) -> None:
        """Called by every forward with its grid after space-to-depth (LOT records it)."""

    # ------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride[0]
        out_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if self.kernel_size == (1, 1):
            y = self._forward_pointwise(x, dtype)
        else:
            if s > 1:
                x = space_to_depth(x, s)
            b, c, h, w = x.shape
            self._saw_grid(h, w)
            q = self._q(h, w, dtype)  # (h, w//2+1, C_out, C_in')
            with torch.autocast(x.device.type, enabled=False):
                y = FourierProduct.apply(x.to(dtype), q)  # irfft2(Q rfft2(x)), backward by hand
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        return y.to(out_dtype)

    def _forward_pointwise(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The layer when its kernel is 1x1 after space-to-depth (every strided
        layer of kernel size <= 2s-1, e.g. ResNet's 3x3 stride-2 convs and 1x1
        shortcuts). A 1x1 kernel's transform is the same real matrix at every
        frequency (its only tap sits at offset 0: every phase factor is exactly
        1), so Q(w) is one real matrix Q and irfft2(Q rfft2(x)) = Q x: Q is
        computed once instead of once per frequency, and applied as the
        convolution it is, no FFT: an s x s kernel with stride s on the
        original input, which is space-to-depth followed by Q (channel
        c*s*s + i*s + j is tap (c, i, j)). The same values as the Fourier
        route up to rounding (tests/test_speed_equal.py)."""
        s = self.stride[0]
        check_divisible(x, s)
        self._saw_grid(x.shape[-2] // s, x.shape[-1] // s)
        q = self._q(1, 1, dtype)[0, 0]  # complex with imaginary part exactly zero
        kernel = q.real.reshape(self.out_channels, self.in_channels, s, s)
        with torch.autocast(x.device.type, enabled=False):
            return F.conv2d(x.to(dtype), kernel, stride=s)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size} (after "
                f"space-to-depth), stride={self.stride}, circular"
                + (", bias=True" if self.bias is not None else ""))


@register_normalizer("cayley")
class Cayley(Normalizer):
    """Orthogonal circular convolutions by the Cayley transform. No options."""

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return CayleyConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
