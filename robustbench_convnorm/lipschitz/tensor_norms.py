"""Bounds on a convolution's spectral norm from its kernel alone: TN, F4, flat.

For a kernel K (C_out, C_in, h, w) and stride s, K' is the polyphase kernel
(C_out, C_in*s*s, h', w') of ``spectra.reshape_strided_kernel``. For any
padding and input size (Grishina, Gorbunov and Rakhuba, ECCV 2024):

    ||conv|| <= sqrt(h'w') ||K'||_sigma <= F4 <= sqrt(h'w') ||W_flat||_2

``||K'||_sigma`` comes from HOPM (``hopm``), which finds a local maximum,
so ``tn_bound`` returns a LOWER estimate of the TN bound, which is itself an
upper bound on the norm. The default search is built to reach the global
maximum (spread starts, confirmation rounds); the training penalty of
``normalizers/tn.py`` uses the cheaper ``hopm_starts`` and warm-started
``hopm_batch`` (from ``power_method``).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Union

import torch

from ._util import IntPair, pair
from .power_method import _complex_dtype, hopm_search
from .spectra import reshape_strided_kernel

__all__ = ["f4_bound", "f4_matricizations", "flat_bound", "tn_bound", "tn_scale", "tn_value"]


def tn_scale(weight_shape: Sequence[int], stride: IntPair = 1) -> float:
    """sqrt(h' * w') for a kernel shape and stride."""
    sh, sw = pair(stride)
    h, w = int(weight_shape[2]), int(weight_shape[3])
    return math.sqrt(-(-h // sh) * -(-w // sw))


def tn_value(weight: torch.Tensor, vectors: Sequence[torch.Tensor], stride: IntPair = 1) -> torch.Tensor:
    """``sqrt(h'w') * |K'(u1, u2, u3, u4)|`` with fixed vectors, differentiable
    in ``weight``. At HOPM's vectors this is the TN estimate, and its gradient
    the estimate's gradient (the vectors are at a maximum)."""
    k = reshape_strided_kernel(weight, stride)
    cdtype = _complex_dtype(k.dtype)
    u = [v.to(device=k.device, dtype=cdtype) for v in vectors]
    val = torch.einsum("abcd,a,b,c,d->", k.to(cdtype), *u)
    return torch.abs(val) * tn_scale(weight.shape, stride)


def tn_bound(weight: torch.Tensor, stride: IntPair = 1, *, differentiable: bool = False,
             **search) -> Union[float, torch.Tensor]:
    r"""The TN bound on the spectral norm of a convolution, for any padding
    and input size (Grishina et al., ECCV 2024):

    .. math::
        \|\mathrm{conv}_K\| \le \sqrt{h' w'}\, \|K'\|_\sigma

    ``||K'||_sigma`` comes from ``hopm_search`` (its keyword arguments pass
    through: ``n_iter``, ``restarts``, ``rounds``, ``tol``, ``generator``,
    ...), so the value is a lower estimate of the bound; the default search
    confirms its maximum with fresh random starts. Computed in the kernel's
    precision.

    Args:
        weight: (C_out, C_in, h, w).
        stride: int or pair.
        differentiable: return a 0-d tensor carrying ``weight``'s gradient.

    Example::

        >>> w = torch.randn(8, 6, 3, 3, dtype=torch.float64)
        >>> circular_spectral_norm(w, 16) <= tn_bound(w) <= f4_bound(w)
        True
    """
    k = reshape_strided_kernel(weight.detach(), stride)
    res = hopm_search(k, **search)
    if differentiable:
        return tn_value(weight, res.vectors, stride)
    return res.value * tn_scale(weight.shape, stride)


def _matrix_spectral_norm(m: torch.Tensor) -> torch.Tensor:
    """Largest singular value via the eigenvalues of the smaller Gram matrix
    (differentiable; fast for the tall/wide matricizations)."""
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    # (LAPACK is much slower on non-contiguous input)
    return torch.sqrt(torch.clamp(torch.linalg.eigvalsh(gram.contiguous())[-1], min=0))


def f4_matricizations(weight: torch.Tensor, stride: IntPair = 1) -> List[torch.Tensor]:
    """Singla & Feizi's four reshapings of K' (C_out, C_in', h', w'):
    (C_out*h', C_in'*w'), (C_out*w', C_in'*h'), (C_out, C_in'*h'*w') = W_flat,
    (C_out*h'*w', C_in')."""
    k = reshape_strided_kernel(weight, stride)
    co, ci, h, w = k.shape
    return [
        k.permute(0, 2, 1, 3).reshape(co * h, ci * w),
        k.permute(0, 3, 1, 2).reshape(co * w, ci * h),
        k.reshape(co, ci * h * w),
        k.permute(0, 2, 3, 1).reshape(co * h * w, ci),
    ]


def f4_bound(weight: torch.Tensor, stride: IntPair = 1, *, differentiable: bool = False) -> Union[float, torch.Tensor]:
    r"""Fantastic-four bound (Singla & Feizi 2021) on the stride-reshaped
    kernel, as in the TN paper: :math:`\sqrt{h'w'} \min_i \|R_i(K')\|_2` over
    the four ``f4_matricizations``. Exact matrix norms (float64 unless
    ``differentiable``)."""
    w = weight if differentiable else weight.detach().to(torch.float64)
    norms = torch.stack([_matrix_spectral_norm(m) for m in f4_matricizations(w, stride)])
    value = norms.min() * tn_scale(weight.shape, stride)
    return value if differentiable else float(value)


def flat_bound(weight: torch.Tensor, stride: IntPair = 1) -> float:
    """``sqrt(h'w') * ||W_flat||_2`` with W_flat = (C_out, C_in*h*w), the
    matrix spectral normalization normalizes (float64)."""
    w = weight.detach().to(torch.float64)
    return float(_matrix_spectral_norm(w.reshape(w.shape[0], -1))) * tn_scale(weight.shape, stride)
