"""Convex potential layers (CPL; Meunier, Delattre, Araujo & Allauzen, ICML 2022).

CPL is a residual layer, not a convolution: ``block(channels, kernel_size)``
builds

    h(x) = x - (2 / ||W||_2^2) W sigma(W^T x + b)                    (Eq. 7 / Prop. 3)

with sigma = ReLU (the gradient step of a convex potential), W^T the
zero-padded convolution with a kernel (C, C, k, k) and W its adjoint. It is
1-Lipschitz when the factor is at most 2 / ||W||^2. ||W||_2 is estimated by
power iteration on the convolution (Sec. 4): a persistent vector u of the
input's size, one step per training forward,

    v = W^T u / ||W^T u||,  u = W v / ||W v||,  sigma_est = <W^T u, v>;

in evaluation u is left as it is and ``eval_iterations`` further steps run
from it (cached while the weights do not change). A power estimate is at
most the true norm, so the factor can be slightly too large:
``lipschitz_bound`` returns the sound value

    max(1, 2 B / sigma_est^2 - 1)

(the Jacobian I - t W D W^T, 0 <= D <= I, has eigenvalues in
[1 - t ||W||^2, 1]) with B >= ||W||^2 on the last input size h x w: the
exact norm of the dense matrix where C*h*w <= 2048, and otherwise the norm of
the circular convolution on (h + k//2) x (w + k//2), of which the zero
padded one is a restriction (the largest singular value of the kernel's
transfer matrices on that grid, float64 SVD; within 2% of the zero-padded
norm from 16 x 16 on in our measurements, 8% at 8 x 8).

``conv(...)`` (for architectures that need a plain convolution) gives an
AOL-rescaled convolution; the ConvNet family uses only ``block``.

Options: ``eval_iterations`` (100, as the comparison paper's code),
``eps`` (1e-6, the guard in the normalisations and the factor). Known
differences: u is created at the first forward of each input size from a
fixed seed (reproducible without drawing from the global RNG).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .aol import aol_conv_for
from .base import Normalizer
from .convnorm_ops import kernel_rfft2
from .lipschitz_ops import init_residual_parameters, residual_step
from .registry import register_normalizer
from .weight_cache import ParameterCache


def power_step(kernel: torch.Tensor, u: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """One power-iteration step on W^T (conv with ``kernel``): (u, v) normalised."""
    pad = kernel.shape[-1] // 2
    v = F.conv2d(u, kernel, padding=pad)
    v = v / (v.norm() + eps)
    u = F.conv_transpose2d(v, kernel, padding=pad)
    return u / (u.norm() + eps), v


def circular_norm_squared(kernel: torch.Tensor, height: int, width: int) -> float:
    """||circular conv with ``kernel`` on height x width||^2: the largest
    squared singular value of its transfer matrices (float64)."""
    with torch.no_grad():
        spectrum = kernel_rfft2(kernel.detach().double(), height, width)  # (C_out, C_in, h, w//2+1)
        return float(torch.linalg.svdvals(spectrum.permute(2, 3, 0, 1)).max()) ** 2


#: up to this many input entries (C*h*w) the bound uses the exact dense norm
DENSE_BOUND_MAX = 2048


def zero_padded_norm_squared(kernel: torch.Tensor, height: int, width: int) -> float:
    """||zero-padded 'same' conv with ``kernel`` on height x width||^2, exactly:
    the largest squared singular value of its dense matrix (float64)."""
    with torch.no_grad():
        k = kernel.detach().double()
        n = k.shape[1] * height * width
        basis = torch.eye(n, dtype=torch.float64).reshape(n, k.shape[1], height, width)
        matrix = F.conv2d(basis, k, padding=k.shape[-1] // 2).reshape(n, -1)
        return float(torch.linalg.matrix_norm(matrix, ord=2)) ** 2


class CPLBlock(nn.Module):
    """h(x) = x - 2/||W||^2 W ReLU(W^T x + b) with ||W|| by power iteration."""

    #: a buffer resized by input size and a Python-side cache: torch.compile leaves it eager (speed.py)
    compile_eager = True

    def __init__(self, channels: int, kernel_size: int = 3, *, eval_iterations: int = 100, eps: float = 1e-6):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"cpl: needs an odd kernel size, got {kernel_size}")
        self.channels, self.eval_iterations, self.eps = int(channels), int(eval_iterations), float(eps)
        self.kernel = nn.Parameter(torch.empty(self.channels, self.channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(self.channels))
        init_residual_parameters(self.kernel, self.bias)
        self.register_buffer("u", torch.zeros(0))
        self._cache = ParameterCache(type(self).__name__)
        self._last_size: Optional[Tuple[int, int]] = None

    # The buffer's shape follows the input size: accept a saved one of any shape.
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "u"
        if key in state_dict and state_dict[key].shape != self.u.shape:
            self.u = torch.empty_like(state_dict[key], device=self.u.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _u_for(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, self.channels, x.shape[-2], x.shape[-1])
        if tuple(self.u.shape) != shape:
            gen = torch.Generator().manual_seed(0)
            self.u = torch.randn(shape, generator=gen, dtype=torch.float64).to(self.kernel.device, x.dtype)
        return self.u

    def _sigma_after(self, u: torch.Tensor, iterations: int) -> torch.Tensor:
        kernel = self.kernel.detach().to(u.dtype)
        v = None
        for _ in range(max(1, iterations)):
            u, v = power_step(kernel, u, self.eps)
        return (F.conv2d(u, kernel, padding=kernel.shape[-1] // 2) * v).sum(), u

    def rescaling(self, x: torch.Tensor) -> torch.Tensor:
        u = self._u_for(x)
        self._last_size = (x.shape[-2], x.shape[-1])
        if self.training and torch.is_grad_enabled():
            self._cache.clear()
            with torch.no_grad():
                _, u = self._sigma_after(u, 1)
                self.u = u
            # sigma with gradient through the kernel (u, v constants), as the authors
            v = F.conv2d(u, self.kernel.to(u.dtype), padding=self.kernel.shape[-1] // 2)
            sigma = v.norm()
            return 2.0 / (sigma ** 2 + self.eps)
        sigma = self._cache.lookup((self.kernel,), (tuple(u.shape), u.dtype),
                                   lambda: self._sigma_after(u, self.eval_iterations)[0])
        return 2.0 / (sigma ** 2 + self.eps)

    def train(self, mode: bool = True):
        self._cache.clear()
        return super().train(mode)

    def forward(self, x):
        scale = self.rescaling(x).reshape(1).expand(self.channels)
        return residual_step(x, self.kernel, self.bias, scale)

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """max(1, 2 B / sigma^2 - 1) for the evaluation-mode sigma (see the
        module docstring); needs one forward first (the input size)."""
        if self._last_size is None and self.u.dim() == 4:
            self._last_size = tuple(self.u.shape[-2:])  # a loaded model: u has the input's size
        if self._last_size is None:
            raise RuntimeError("cpl: lipschitz_bound needs the input size: run one forward pass first")
        h, w = self._last_size
        k = self.kernel.shape[-1]
        bound_sq = circular_norm_squared(self.kernel, h + k // 2, w + k // 2)
        if self.channels * h * w <= DENSE_BOUND_MAX:
            bound_sq = min(bound_sq, zero_padded_norm_squared(self.kernel, h, w))
        u = self.u.double() if self.u.numel() else torch.randn(1, self.channels, h, w, dtype=torch.float64)
        sigma, _ = self._sigma_after(u, self.eval_iterations)
        t = 2.0 / (float(sigma) ** 2 + self.eps)
        return max(1.0, t * bound_sq - 1.0)

    def extra_repr(self):
        return (f"{self.channels}, kernel_size={tuple(self.kernel.shape[-2:])}, "
                f"eval_iterations={self.eval_iterations}")


@register_normalizer("cpl")
class CPL(Normalizer):
    """Convex potential residual layers (``block``); AOL-rescaled
    convolutions where an architecture needs a plain conv."""

    def __init__(self, *, eval_iterations: int = 100, eps: float = 1e-6):
        if int(eval_iterations) < 1:
            raise ValueError(f"cpl: eval_iterations must be >= 1, got {eval_iterations}")
        if not float(eps) > 0:
            raise ValueError(f"cpl: eps must be > 0, got {eps}")
        self.eval_iterations, self.eps = int(eval_iterations), float(eps)

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return aol_conv_for("cpl", in_channels, out_channels, kernel_size, stride, padding, bias, self.eps)

    def block(self, channels: int, kernel_size: int = 3) -> nn.Module:
        return CPLBlock(channels, kernel_size, eval_iterations=self.eval_iterations, eps=self.eps)
