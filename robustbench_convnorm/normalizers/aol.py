"""Almost-orthogonal Lipschitz (AOL) convolutions (Prach & Lampert, ECCV 2022).

For a parameter matrix P, AOL rescales its columns by

    D = diag( sum_j |P^T P|_ij )^{-1/2}                              (Thm. 1)

so that ||P D||_2 <= 1 for any P (the Schur test). For a convolution with
kernel K (C_out, C_in, k, k) the entries of P^T P are the taps of the
kernel's self-convolution K^T * K (C_in, C_in, 2k-1, 2k-1), and

    d_i = ( sum_{j, taps} |(K^T * K)_ij| )^{-1/2},    y = K * (d . x)  (Thm. 2)

i.e. input channel i of the kernel is scaled by d_i. The bound holds for
any input size, zero padding and stride (a restriction of the full
convolution has no larger norm), so ``stride`` is applied directly. If P
has orthogonal columns, D is the inverse of their norms and P D is
orthogonal ("almost orthogonal" near such P).

Options: ``eps`` (added to the row sums before the inverse square root,
guards an all-zero channel; 1e-6 as in the authors' code) and
``identity_init`` (the identity at the centre tap, ``nn.init.dirac_``, as
the authors' code initialises AOL; False keeps ``nn.Conv2d``'s default
initialisation). Known difference from the comparison paper's code: the
padding is the model's (zero padding in the project's models) where that
code pads circularly; the bound holds for either.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .base import Normalizer
from .convnorm_ops import pair
from .lipschitz_ops import schur_sums
from .registry import register_normalizer


def aol_rescaling(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """d_i = (sum_j |K^T K|_ij + eps)^{-1/2} for each input channel i (Thm. 2)."""
    return (schur_sums(weight) + eps).rsqrt()


class AOLConv2d(nn.Module):
    """A convolution whose kernel is rescaled per input channel by AOL's
    d (see the module docstring): 1-Lipschitz for any kernel."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False, *,
                 eps: float = 1e-6, identity_init: bool = True):
        super().__init__()
        kh, kw = pair(kernel_size)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.stride, self.padding, self.eps = pair(stride), pair(padding), float(eps)
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels, kh, kw))
        if identity_init:
            # The identity at the centre tap, as far as the channels allow
            # (``dirac_``, the authors' initialisation): the layer starts orthogonal.
            nn.init.dirac_(self.weight)
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None

    def rescaled_weight(self) -> torch.Tensor:
        return self.weight * aol_rescaling(self.weight, self.eps).view(1, -1, 1, 1)

    def forward(self, x):
        return F.conv2d(x, self.rescaled_weight().to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype), self.stride, self.padding)

    def lipschitz_bound(self) -> float:
        """1: AOL's Theorem 2 holds for every kernel (the bias does not count)."""
        return 1.0

    def extra_repr(self):
        kh, kw = self.weight.shape[-2:]
        return (f"{self.in_channels}, {self.out_channels}, kernel_size=({kh}, {kw}), stride={self.stride}, "
                f"padding={self.padding}" + (", bias=True" if self.bias is not None else ""))


def aol_conv_for(layer: str, in_channels, out_channels, kernel_size, stride, padding, bias, eps) -> AOLConv2d:
    """The plain convolution of a residual 1-Lipschitz layer (SLL, CPL) that has
    none of its own: AOL's, which its paper names as its non-residual special
    case. Said once per process, since a grid listing both AOL and this layer
    on such an architecture compares one layer with itself."""
    warnings.warn(f"{layer}: this architecture asks for plain convolutions and {layer} has none of its own "
                  f"(its layer is a residual block): it builds AOL's rescaled convolution, the same layer "
                  f"as 'aol'; compare {layer} itself in an architecture of whole layers (lipconvnet)",
                  UserWarning, stacklevel=3)
    return AOLConv2d(in_channels, out_channels, kernel_size, stride, padding, bias, eps=eps)


@register_normalizer("aol")
class AOL(Normalizer):
    """Almost-orthogonal Lipschitz convolutions: every conv rescaled per
    input channel from its kernel's self-convolution (1-Lipschitz)."""

    def __init__(self, *, eps: float = 1e-6, identity_init: bool = True):
        if not float(eps) > 0:
            raise ValueError(f"aol: eps must be > 0, got {eps}")
        self.eps, self.identity_init = float(eps), bool(identity_init)

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return AOLConv2d(in_channels, out_channels, kernel_size, stride, padding, bias,
                         eps=self.eps, identity_init=self.identity_init)
