"""Layer-wise orthogonal training (LOT; Xu, Li & Li, NeurIPS 2022).

A circular convolution is diagonalised by the 2-D Fourier transform: on an
H x W input, its transfer matrix at frequency w is the complex C_out x C_in
matrix V(w) (the kernel's transform, the same one Cayley uses, taken from
``cayley.CayleyConv2d._kernel_transform``). LOT makes every V(w) an
isometry by

    Q(w) = V(w) (V(w)^H V(w))^{-1/2}                                 (Thm. 1 / Eq. 5)

(for C_out < C_in the co-isometry (V V^H)^{-1/2} V, the smaller Gram) and
computes the inverse square root by Newton–Schulz iterations (Eq. 7): with
A = Gram / ||Gram||_F, Y_0 = A, Z_0 = I,

    T_k = (3I - Z_k Y_k) / 2,  Y_{k+1} = Y_k T_k,  Z_{k+1} = T_k Z_k,  Z_k -> A^{-1/2}.

The output is irfft2(Q(w) rfft2(x)(w)), exactly as in ``cayley.py``
(circular boundaries: the ``padding`` argument is ignored; stride s by
space-to-depth then kernel size max(1, k // s)). A finite number of
iterations leaves singular values of Q(w) slightly below 1 where the Gram
is ill-conditioned (the iteration maps them monotonically towards 1 from
below), never above: ``lipschitz_bound`` returns the exact largest singular
value over every frequency of the last input size seen, computed by SVD.

Options: ``iterations`` (Newton–Schulz steps per forward, 10).
Known differences from the authors' code: the kernel transform is the
project's centred one shared with Cayley (LOT pads the kernel to the input
size without centring, a circular shift of the output); the Gram is
scaled by its Frobenius norm (a sound choice for convergence) where the
authors scale by a fixed constant; no separate evaluation iteration count.
"""
from __future__ import annotations

import torch

from .base import Normalizer
from .cayley import CayleyConv2d
from .lipschitz_ops import newton_schulz_inverse_sqrt
from .registry import register_normalizer


def lot_orthogonalize(v: torch.Tensor, iterations: int) -> torch.Tensor:
    """Q = V (V^H V)^{-1/2} for tall or square V, (V V^H)^{-1/2} V for wide V (..., m, n)."""
    m, n = v.shape[-2:]
    if m >= n:
        return v @ newton_schulz_inverse_sqrt(v.mH @ v, iterations)
    return newton_schulz_inverse_sqrt(v @ v.mH, iterations) @ v


class LOTConv2d(CayleyConv2d):
    """Orthogonal circular convolution by LOT's per-frequency
    orthogonalization (see the module docstring). Shares Cayley's Fourier
    machinery (kernel transform, forward, cache of Q); has no ``alpha``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False, *,
                 iterations: int = 10):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.alpha = None  # Cayley's scale: Q does not depend on the kernel's scale here
        self.iterations = int(iterations)
        # The last (height, width) seen after space-to-depth, kept in the state
        # dict so that lipschitz_bound works on a model loaded from a checkpoint.
        self.register_buffer("last_grid", torch.zeros(2, dtype=torch.long))
        self._grid_written = None

    def orthogonal_matrices(self, height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        with torch.autocast(self.weight.device.type, enabled=False):
            return lot_orthogonalize(self._kernel_transform(height, width, cdtype), self.iterations)

    def _saw_grid(self, height: int, width: int) -> None:
        if self._grid_written != (height, width):  # a Python check: no device sync per forward
            self.last_grid.copy_(torch.tensor([height, width]))
            self._grid_written = (height, width)

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """The layer's exact operator norm on the last input size seen: the
        largest singular value of Q(w) over every frequency (float64 SVD).
        Stride and channel handling are permutations. The size is the buffer
        ``last_grid`` (saved with the model); before any forward it is
        unknown and an error says so."""
        height, width = self.last_grid.tolist()
        if height == 0:
            raise RuntimeError("lot: lipschitz_bound needs the input size: run one forward pass first")
        q = self.orthogonal_matrices(height, width, dtype=torch.float64)
        return float(torch.linalg.svdvals(q).max())

    def extra_repr(self) -> str:
        return super().extra_repr() + f", iterations={self.iterations}"


@register_normalizer("lot")
class LOT(Normalizer):
    """Orthogonal circular convolutions by Newton–Schulz orthogonalization of
    every frequency's transfer matrix (``iterations`` steps)."""

    def __init__(self, *, iterations: int = 10):
        if int(iterations) < 1:
            raise ValueError(f"lot: iterations must be >= 1, got {iterations}")
        self.iterations = int(iterations)

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return LOTConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias,
                         iterations=self.iterations)
