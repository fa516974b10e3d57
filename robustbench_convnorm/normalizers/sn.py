"""Spectral normalization (Miyato et al., ICLR 2018) of conv layers, through
PyTorch's ``torch.nn.utils.parametrizations.spectral_norm``.

The weight is flattened to (C_out, C_in*k*k) and divided by an estimate of
that matrix's largest singular value; the estimate comes from power
iteration, ``n_power_iterations`` steps per training forward, with u and v
frozen in evaluation mode. Note that this bounds the flattened matrix, not
the convolution operator: the operator norm can exceed 1 by up to a factor
sqrt(k*k) (docs/normalizers.md, ``sn``).
"""
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .base import Normalizer
from .registry import register_normalizer


@register_normalizer("sn")
class SpectralNorm(Normalizer):
    """Options: ``n_power_iterations`` (1, as in Miyato et al. and PyTorch's
    default) and ``eps`` (PyTorch's guard in the power iteration's
    normalizations, 1e-12)."""

    def __init__(self, *, n_power_iterations: int = 1, eps: float = 1e-12):
        if int(n_power_iterations) < 1:
            raise ValueError(f"sn: n_power_iterations must be >= 1, got {n_power_iterations}")
        self.n_power_iterations = int(n_power_iterations)
        self.eps = float(eps)

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        # dim=0: the output channels index the rows of the flattened matrix.
        return spectral_norm(conv, n_power_iterations=self.n_power_iterations, eps=self.eps, dim=0)

    def describe(self) -> str:
        return f"sn(n_power_iterations={self.n_power_iterations})"
