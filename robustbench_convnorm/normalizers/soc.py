"""Skew orthogonal convolutions (SOC; Singla & Feizi, ICML 2021).

A convolution L with kernel M whose transpose is its negative is
skew-symmetric, and exp(L) is then orthogonal (Thm. 1 of the paper). SOC
makes the kernel skew by

    M = W - conv_transpose(W),  conv_transpose(W)[i, j, a, b] = W[j, i, k-1-a, k-1-b]   (Eq. 4)

(for odd k with padding (k-1)/2 the zero-padded convolution with M is then
exactly the negative of its own adjoint on every input size) and applies

    exp(L) x ~ sum_{i=0}^{terms-1} L^i x / i!                      (Eq. 5, truncated)

Before the series, M is scaled so that ||L||_2 <= ``correction`` (0.7 in
the authors' code; the series then converges fast). The truncation leaves
the layer slightly non-orthogonal. L is skew-symmetric, hence normal with
eigenvalues i theta, |theta| <= c = correction, so the truncated series
S_n(L) has the singular values |p_n(i theta)| (p_n the first n terms of
exp): its norm is at most max over [0, c] of |p_n(i theta)|, and at most
1 + c^n e^c / n! (the Lagrange tail). ``lipschitz_bound`` returns the
smaller of the two (the first computed on a fine grid with a sound slack).
At c = 0.7 the excess over 1 is 0 for n = 4, 5, 8, 12 terms (the truncation
only shrinks) and 3.0e-2, 1.3e-4, 9.4e-6 for n = 3, 6, 7 (docs/normalizers.md, ``soc``).

Channels: with C_in != C_out the input is padded with zero channels to
max(C_in, C_out) and the first C_out output channels are kept (an isometry
then a co-isometry: norm <= 1). Stride s: space-to-depth first (C_in*s*s
channels, an orthogonal permutation; input size a multiple of s).

Options: ``train_terms`` (5), ``eval_terms`` (12), ``correction`` (0.7).
Known difference from the authors' code: the norm of L is bounded by the
Schur test on the skew kernel (sound, size-free, no iterations) where the
authors use their power-iteration bound of the reshaped kernel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Normalizer
from .lipschitz_ops import odd_square_kernel, schur_sums, space_to_depth
from .registry import register_normalizer


def skew_kernel(weight: torch.Tensor) -> torch.Tensor:
    """W minus its transposed convolution's kernel (Eq. 4): a skew-symmetric operator."""
    return weight - weight.transpose(0, 1).flip(-2, -1)


def truncation_tail(norm: float, terms: int) -> float:
    """A bound of sum_{i >= terms} norm^i / i! (how far the truncated series can
    exceed exp's norm 1): the Lagrange remainder norm^terms / terms! * e^norm."""
    return norm ** terms / math.factorial(terms) * math.exp(norm)


def truncated_series_norm(norm: float, terms: int, points: int = 20001) -> float:
    """A sound bound of ||S_n(L)|| over every skew-symmetric L with ||L|| <= norm.

    L is normal with eigenvalues i theta, |theta| <= norm, so S_n(L) has the
    singular values |p(i theta)|, p the truncated series: their maximum over
    [0, norm] on a grid of ``points``, plus the most |p(i theta)| can rise
    between grid points (half the spacing times sum_{k < n-1} norm^k / k!),
    and never more than 1 + the Lagrange tail."""
    theta = torch.linspace(0.0, norm, points, dtype=torch.float64)
    z = torch.complex(torch.zeros_like(theta), theta)
    p = sum(z ** k / math.factorial(k) for k in range(terms))
    slope = sum(norm ** k / math.factorial(k) for k in range(max(terms - 1, 1)))
    grid = float(p.abs().max()) + 0.5 * norm / (points - 1) * slope
    return min(max(1.0, grid), 1.0 + truncation_tail(norm, terms))


class SOCConv2d(nn.Module):
    """exp of a skew-symmetric convolution by a truncated Taylor series (see
    the module docstring); zero padding (k-1)/2, odd kernel sizes."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False, *,
                 train_terms: int = 5, eval_terms: int = 12, correction: float = 0.7):
        super().__init__()
        kh, sh = odd_square_kernel("soc", kernel_size, stride)
        self.in_channels, self.out_channels, self.stride = int(in_channels), int(out_channels), sh
        self.channels = max(self.in_channels * sh * sh, self.out_channels)
        self.train_terms, self.eval_terms, self.correction = int(train_terms), int(eval_terms), float(correction)
        self.weight = nn.Parameter(torch.empty(self.channels, self.channels, kh, kh))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None

    @property
    def terms(self) -> int:
        return self.train_terms if self.training else self.eval_terms

    def skew_operator_kernel(self) -> torch.Tensor:
        """The skew kernel scaled so that ||L||_2 <= correction (Schur test)."""
        m = skew_kernel(self.weight)
        bound = schur_sums(m).max().clamp_min(1e-12).sqrt()
        return m * (self.correction / bound)

    def forward(self, x):
        if self.stride > 1:
            x = space_to_depth(x, self.stride)
        if x.shape[1] < self.channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.channels - x.shape[1]))
        m = self.skew_operator_kernel().to(x.dtype)
        pad = m.shape[-1] // 2
        out, term = x, x
        for i in range(1, self.terms):
            term = F.conv2d(term, m, padding=pad) / i
            out = out + term
        out = out[:, :self.out_channels]
        return out if self.bias is None else out + self.bias.to(out.dtype).view(1, -1, 1, 1)

    def lipschitz_bound(self) -> float:
        """``truncated_series_norm`` for the current mode's number of terms
        (||L|| <= correction; channel padding, slicing and space-to-depth do
        not raise the norm)."""
        return truncated_series_norm(self.correction, self.terms)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.weight.shape[-2:])}, "
                f"stride={self.stride}, terms={self.train_terms} (train) / {self.eval_terms} (eval)")


@register_normalizer("soc")
class SOC(Normalizer):
    """Skew orthogonal convolutions: exp of a skew-symmetric conv by a
    truncated series of ``train_terms`` / ``eval_terms`` terms, with
    ||L|| scaled to ``correction``."""

    def __init__(self, *, train_terms: int = 5, eval_terms: int = 12, correction: float = 0.7):
        if int(train_terms) < 2 or int(eval_terms) < 2:
            raise ValueError(f"soc: train_terms and eval_terms must be >= 2, got {train_terms}, {eval_terms}")
        if not 0 < float(correction) <= 1:
            raise ValueError(f"soc: correction must be in (0, 1], got {correction}")
        self.train_terms, self.eval_terms, self.correction = int(train_terms), int(eval_terms), float(correction)

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return SOCConv2d(in_channels, out_channels, kernel_size, stride, padding, bias,
                         train_terms=self.train_terms, eval_terms=self.eval_terms, correction=self.correction)
