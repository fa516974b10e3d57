"""Building blocks shared by the 1-Lipschitz layers (aol, soc, sll, cpl,
lot, bcop): a kernel's self-convolution and the Schur-test bound it gives,
Björck orthogonalization, Newton–Schulz inverse square roots, and the
invertible downsampling (space-to-depth) that emulates strides.

The Schur test (used by AOL and SLL, and here as a size-free sound upper
bound of any convolution's operator norm): for a matrix M and positive
weights q, ||M||^2 <= max_i sum_j |M^T M|_ij q_j / q_i. For a convolution
with kernel K, the entries of M^T M are the taps of the self-convolution
K^T * K, so the bound needs the kernel only; a zero-padded or strided
convolution on a finite image is a restriction of the full one and obeys
the same bound.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .cayley import space_to_depth  # noqa: F401  (re-exported: the layers' stride emulation)
from .convnorm_ops import pair


def odd_square_kernel(layer: str, kernel_size, stride):
    """(k, s) for a layer that needs an odd square kernel and equal positive
    strides (emulated by space_to_depth); a ValueError naming the layer otherwise."""
    kh, kw = pair(kernel_size)
    sh, sw = pair(stride)
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"{layer}: needs an odd square kernel, got {kernel_size}")
    if sh != sw or sh < 1:
        raise ValueError(f"{layer}: needs equal positive strides, got {stride}")
    return kh, sh


def self_convolution(kernel: torch.Tensor) -> torch.Tensor:
    """K^T K of the convolution with ``kernel`` (C_out, C_in, kh, kw), as a
    (C_in, C_in, 2kh-1, 2kw-1) kernel: entry [i, j] is sum over output
    channels o of the full cross-correlation of K[o, i] with K[o, j]."""
    kh, kw = kernel.shape[-2:]
    kt = kernel.transpose(0, 1)
    return F.conv2d(kt, kt, padding=(kh - 1, kw - 1))


def schur_sums(kernel: torch.Tensor, log_q: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_j |K^T K|_ij q_j / q_i for every input channel i (q = exp(log_q),
    ones when None): the Schur-test row sums of AOL (q = 1) and SLL."""
    gram = self_convolution(kernel).abs()
    if log_q is None:
        return gram.sum(dim=(1, 2, 3))
    q = torch.exp(log_q)
    return (gram * q.view(1, -1, 1, 1)).sum(dim=(1, 2, 3)) / q


def schur_norm_bound(kernel: torch.Tensor) -> float:
    """A sound upper bound of the L2 operator norm of the convolution with
    ``kernel`` on any input size, padding or stride: sqrt(max_i row sum),
    for the kernel and for its adjoint's (the same norm), the smaller one
    (the adjoint's is the tight one for a co-isometry)."""
    with torch.no_grad():
        k = kernel.detach().double()
        adjoint = k.transpose(0, 1).flip(-2, -1)
        return math.sqrt(min(float(schur_sums(k).max()), float(schur_sums(adjoint).max())))


def matrix_norm_bound(w: torch.Tensor) -> torch.Tensor:
    """sqrt(||W||_1 ||W||_inf) >= ||W||_2, per matrix of a batch (..., m, n)."""
    a = w.abs()
    return torch.sqrt(a.sum(-2).amax(-1) * a.sum(-1).amax(-1))


def bjorck_step(q: torch.Tensor) -> torch.Tensor:
    """One first-order Björck step Q <- Q (3/2 I - 1/2 Q^T Q)."""
    return 1.5 * q - 0.5 * q @ (q.mT @ q)


def bjorck(w: torch.Tensor, iterations: int) -> torch.Tensor:
    """Björck & Bowie orthogonalization of (..., m, n) with m >= n: W scaled
    below norm 1 (so the iteration converges), then ``iterations`` steps to
    the closest matrix with orthonormal columns. Wide matrices are handled
    through their transpose."""
    if w.shape[-2] < w.shape[-1]:
        return bjorck(w.mT, iterations).mT
    q = w / matrix_norm_bound(w).clamp_min(1e-12)[..., None, None]
    for _ in range(iterations):
        q = bjorck_step(q)
    return q


def newton_schulz_step(y: torch.Tensor, z: torch.Tensor, eye: torch.Tensor):
    """One coupled Newton–Schulz step: T = (3I - Z Y) / 2, Y <- Y T, Z <- T Z;
    Y tends to A^{1/2} and Z to A^{-1/2} when started from Y = A, Z = I with
    the eigenvalues of A in (0, 1]."""
    t = 0.5 * (3.0 * eye - z @ y)
    return y @ t, t @ z


def newton_schulz_inverse_sqrt(gram: torch.Tensor, iterations: int) -> torch.Tensor:
    """(Gram)^{-1/2} of a batch of Hermitian positive semi-definite matrices
    (..., n, n) by ``iterations`` Newton–Schulz steps, after scaling each
    matrix by its Frobenius norm (eigenvalues then lie in [0, 1])."""
    n = gram.shape[-1]
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    scale = torch.linalg.matrix_norm(gram).clamp_min(1e-12)[..., None, None]
    y, z = gram / scale, eye.expand_as(gram)
    for _ in range(iterations):
        y, z = newton_schulz_step(y, z, eye)
    return z / scale.sqrt()


def adjoint_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """The kernel of the adjoint of a zero-padded 'same' convolution (odd k):
    channels swapped, taps flipped."""
    return kernel.transpose(0, 1).flip(-2, -1)


def residual_step(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor,
                  activation=F.relu) -> torch.Tensor:
    """x - W diag(scale) sigma(W^T x + b) for the residual 1-Lipschitz layers
    (CPL, SLL): W^T is the zero-padded convolution with ``kernel`` (C_inner,
    C, k, k) and W its adjoint (a transposed convolution)."""
    pad = (kernel.shape[-2] // 2, kernel.shape[-1] // 2)
    kernel, bias = kernel.to(x.dtype), bias.to(x.dtype)
    inner = activation(F.conv2d(x, kernel, bias, padding=pad))
    inner = inner * scale.to(x.dtype).view(1, -1, 1, 1)
    return x - F.conv_transpose2d(inner, kernel, padding=pad)


def init_residual_parameters(kernel: torch.Tensor, bias: torch.Tensor) -> None:
    """Xavier-normal kernel and a uniform bias in +-1/sqrt(fan_in), the
    initialisation of the SLL and CPL authors' layers."""
    torch.nn.init.xavier_normal_(kernel)
    fan_in = kernel.shape[1] * kernel.shape[2] * kernel.shape[3]
    torch.nn.init.uniform_(bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
