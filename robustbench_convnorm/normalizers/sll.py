"""SDP-based Lipschitz layers (SLL; Araujo, Havens, Delattre, Allauzen &
Hu, ICLR 2023).

SLL is a residual layer, not a convolution: ``block(channels, kernel_size)``
builds

    h(x) = x - 2 W T^{-1} sigma(W^T x + b)                          (Thm. 3)

with sigma = ReLU, W^T the zero-padded convolution with a kernel
(C_inner, C, k, k) (C_inner = C here) and W its adjoint. It is 1-Lipschitz
when T - W^T W is positive semi-definite; SLL takes the diagonal

    t_i = sum_j |W^T W|_ij q_j / q_i,   q_i > 0 learnable           (Thm. 3, via Prop. / Schur test)

which dominates W^T W (the entries of W^T W are the taps of the kernel's
self-convolution, as for AOL). The bias does not change the constant.

``conv(...)`` (for architectures that ask for a plain convolution, such as
ResNet-18) gives SLL's non-residual counterpart, the rescaled convolution
W T^{-1/2} with q = 1, which is exactly AOL's layer (the SLL paper notes AOL
is this special case); the ConvNet family uses only ``block``.

Options: ``eps`` (added to t; 1e-6 as the authors). Known differences from
the authors' code: q = exp(log q) (positive by construction) where the
authors use |q| + eps; t is recomputed at every forward (no cache of the
evaluation rescaling to go stale when weights change).
"""
from __future__ import annotations

import torch
from torch import nn

from .aol import aol_conv_for
from .base import Normalizer
from .lipschitz_ops import adjoint_kernel, init_residual_parameters, residual_step, schur_sums
from .registry import register_normalizer


def sll_rescaling(kernel: torch.Tensor, log_q: torch.Tensor, eps: float) -> torch.Tensor:
    """2 / t with t_i = sum_j |W^T W|_ij q_j / q_i (Thm. 3); W's kernel is the
    adjoint of ``kernel``, so W^T W is C_inner x C_inner."""
    return 2.0 / (schur_sums(adjoint_kernel(kernel), log_q) + eps)


class SLLBlock(nn.Module):
    """h(x) = x - 2 W T^{-1} ReLU(W^T x + b): 1-Lipschitz (see the module docstring)."""

    def __init__(self, channels: int, kernel_size: int = 3, *, eps: float = 1e-6):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"sll: needs an odd kernel size, got {kernel_size}")
        self.channels, self.eps = int(channels), float(eps)
        self.kernel = nn.Parameter(torch.empty(self.channels, self.channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(self.channels))
        self.log_q = nn.Parameter(torch.zeros(self.channels))
        init_residual_parameters(self.kernel, self.bias)

    def rescaling(self) -> torch.Tensor:
        return sll_rescaling(self.kernel, self.log_q, self.eps)

    def forward(self, x):
        return residual_step(x, self.kernel, self.bias, self.rescaling())

    def lipschitz_bound(self) -> float:
        """1: Theorem 3 holds for every kernel, q and bias."""
        return 1.0

    def extra_repr(self):
        return f"{self.channels}, kernel_size={tuple(self.kernel.shape[-2:])}"


@register_normalizer("sll")
class SLL(Normalizer):
    """SDP-based Lipschitz residual layers (``block``); AOL-rescaled
    convolutions where an architecture needs a plain conv."""

    def __init__(self, *, eps: float = 1e-6):
        if not float(eps) > 0:
            raise ValueError(f"sll: eps must be > 0, got {eps}")
        self.eps = float(eps)

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return aol_conv_for("sll", in_channels, out_channels, kernel_size, stride, padding, bias, self.eps)

    def block(self, channels: int, kernel_size: int = 3) -> nn.Module:
        return SLLBlock(channels, kernel_size, eps=self.eps)
