"""Block convolution orthogonal parametrization (BCOP; Li, Haque, Anil,
Lucas, Grosse & Jacobsen, NeurIPS 2019).

A k x k orthogonal convolution on C = max(C_in, C_out) channels is built as
the composition of an orthogonal 1 x 1 convolution H with k-1 orthogonal
2 x 2 block convolutions, each made of two symmetric projectors P, Q
(rank C/2):

    B(P, Q) = [[P Q,       P (I - Q)],
               [(I - P) Q, (I - P)(I - Q)]]                          (Eq. 4-5: [P, I-P] along one
                                                                       axis composed with [Q, I-Q])
    K = H * B(P_1, Q_1) * ... * B(P_{k-1}, Q_{k-1})                (Eq. 6, * = block convolution)

Every P = V V^T comes from an unconstrained C x C/2 matrix made to have
orthonormal columns V by Björck orthogonalization, and H from a C x C
matrix the same way (Sec. 4):

    V_{t+1} = V_t (3/2 I - 1/2 V_t^T V_t),  V_0 = M / sqrt(||M||_1 ||M||_inf).

The convolution is circular (the input is padded by wrapping around, as
the BCOP code in the comparison paper does), so K is an orthogonal operator
on every input size >= k; with ``padding_mode: zeros`` it is the same
kernel with zero padding (norm <= 1, no longer orthogonal at the borders).
Channels C_in != C_out: the C x C kernel's first C_out x C_in block (an
isometry or co-isometry). Stride s: space-to-depth first.

Options: ``bjorck_iterations`` (20, as the authors), ``padding_mode``
(``circular`` | ``zeros``). Known differences from the authors' code: the
initial Björck scaling is the bound sqrt(||M||_1 ||M||_inf) instead of a
power-iteration estimate (no iteration state, never under 1); odd kernel
sizes only (centred kernels).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Normalizer
from .lipschitz_ops import odd_square_kernel, bjorck, schur_norm_bound, space_to_depth
from .registry import register_normalizer

PADDING_MODES = ("circular", "zeros")


def block_orth(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The 2 x 2 block kernel B(P, Q) as (2, 2, C, C)."""
    eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
    rows = [[p @ q, p @ (eye - q)], [(eye - p) @ q, (eye - p) @ (eye - q)]]
    return torch.stack([torch.stack(r) for r in rows])


def block_conv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Block convolution of (ka, ka, C, C) with (kb, kb, C, C): (ka+kb-1, ka+kb-1, C, C)."""
    ka, kb = a.shape[0], b.shape[0]
    n = ka + kb - 1
    out = a.new_zeros(n, n, *a.shape[2:])
    for i in range(ka):
        for j in range(ka):
            out[i:i + kb, j:j + kb] = out[i:i + kb, j:j + kb] + a[i, j] @ b
    return out


class BCOPConv2d(nn.Module):
    """An orthogonal k x k convolution built from block convolutions of
    projectors (see the module docstring)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False, *,
                 bjorck_iterations: int = 20, padding_mode: str = "circular"):
        super().__init__()
        kh, sh = odd_square_kernel("bcop", kernel_size, stride)
        self.in_channels, self.out_channels, self.stride, self.k = int(in_channels), int(out_channels), sh, kh
        self.conv_in_channels = self.in_channels * sh * sh
        c = max(self.conv_in_channels, self.out_channels)
        self.channels, self.bjorck_iterations, self.padding_mode = c, int(bjorck_iterations), padding_mode
        self.ortho = nn.Parameter(torch.empty(c, c))
        nn.init.orthogonal_(self.ortho)
        # 2 (k-1) projectors of rank C/2 (at least 1).
        self.projections = None  # a 1 x 1 layer is H alone
        if kh > 1:
            self.projections = nn.Parameter(torch.empty(2 * (kh - 1), c, max(1, c // 2)))
            for m in self.projections.data:
                nn.init.orthogonal_(m)
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None

    def kernel(self) -> torch.Tensor:
        """The (C_out, C_in', k, k) kernel of Eq. 6, channels sliced."""
        h = bjorck(self.ortho, self.bjorck_iterations)
        kernel = h[None, None]  # (1, 1, C, C)
        if self.k > 1:
            v = bjorck(self.projections, self.bjorck_iterations)
            proj = v @ v.mT  # symmetric projectors
            for t in range(self.k - 1):
                kernel = block_conv(kernel, block_orth(proj[2 * t], proj[2 * t + 1]))
        # taps (a, b, out, in) -> conv2d's (out, in, a, b)
        return kernel.permute(2, 3, 0, 1)[:self.out_channels, :self.conv_in_channels]

    def forward(self, x):
        if self.stride > 1:
            x = space_to_depth(x, self.stride)
        w = self.kernel().to(x.dtype)
        p = self.k // 2
        if self.padding_mode == "circular" and p:
            y = F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), w)
        else:
            y = F.conv2d(x, w, padding=p)
        return y if self.bias is None else y + self.bias.to(y.dtype).view(1, -1, 1, 1)

    def lipschitz_bound(self) -> float:
        """The Schur-test bound of the kernel actually used: sound for every
        input size, padding and stride, and 1 up to Björck's residual for an
        orthogonal kernel (its self-convolution is the identity)."""
        return schur_norm_bound(self.kernel())

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.k}, stride={self.stride}, "
                f"padding_mode={self.padding_mode}, bjorck_iterations={self.bjorck_iterations}")


@register_normalizer("bcop")
class BCOP(Normalizer):
    """Orthogonal convolutions by block convolutions of Björck-orthogonalized
    projectors (circular by default)."""

    def __init__(self, *, bjorck_iterations: int = 20, padding_mode: str = "circular"):
        if int(bjorck_iterations) < 1:
            raise ValueError(f"bcop: bjorck_iterations must be >= 1, got {bjorck_iterations}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"bcop: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.bjorck_iterations, self.padding_mode = int(bjorck_iterations), padding_mode

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return BCOPConv2d(in_channels, out_channels, kernel_size, stride, padding, bias,
                          bjorck_iterations=self.bjorck_iterations, padding_mode=self.padding_mode)
