"""Spectral norms and bounds of conv layers, and Lipschitz reports of models.

Quantities (docs/lipschitz.md explains each):

- ``circular_singular_values(weight, input_size, stride)``: every singular
  value of the circular convolution with ``weight`` on an ``input_size``
  input (Sedghi et al. 2019; strides through the polyphase split).
- ``layer_spectral_norm(layer, input_shape)``: power iteration on the actual
  layer module, used as a black-box linear operator (forward, then the
  vector-Jacobian product), so it covers any padding, stride and normalizer.
- ``tn_bound(weight, stride)``: the tensor-norm bound of Grishina et al.
  (ECCV 2024), ``sqrt(h'*w') * ||K'||_sigma`` with K' the stride-reshaped
  kernel and ``||.||_sigma`` found by alternating power iteration (HOPM) over
  complex vectors from Fourier and random starts. ``differentiable=True``
  returns a tensor with gradient.
- ``f4_bound(weight, stride)``: Singla & Feizi's "fantastic four" bound,
  ``sqrt(h'*w') * min`` of the spectral norms of four matricizations of K'.
- ``flat_bound(weight, stride)``: ``sqrt(h'*w') * ||W_flat||_2``.
- Channel-wise condition numbers (ConvNorm paper, Figure 2), of a weight or
  of the actual layer operator.

For a model: ``model_report(model, input_shape)`` returns a JSON-ready dict
(layout in ``model_report``'s docstring and docs/lipschitz.md);
``format_report`` prints it, ``plot_layer_norms`` draws it, ``table9``
compares condition numbers of a finished grid's records with vanilla.

CLI: ``python -m robustbench_convnorm.lipschitz CHECKPOINT``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

IntPair = Union[int, Sequence[int]]

#: Channel spectra below ``COND_FLOOR * max`` are clamped there, so a channel
#: with an exact zero in its spectrum reports a condition number of 1e6
#: instead of inf (records are JSON).
COND_FLOOR = 1e-12


def _pair(value: IntPair) -> Tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return (value[0], value[0])
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair, got {value!r}")
    return value  # type: ignore[return-value]


# ----------------------------------------------------------------------------
# Kernel reshaping
# ----------------------------------------------------------------------------

def reshape_strided_kernel(weight: torch.Tensor, stride: IntPair = 1) -> torch.Tensor:
    """K (C_out, C_in, h, w) -> K' (C_out, C_in*sh*sw, ceil(h/sh), ceil(w/sw)).

    A stride-s convolution equals a stride-1 convolution of the s*s polyphase
    components of the input (a permutation of it, hence norm-preserving) with
    K'[o, (c, a, b), p, q] = K[o, c, p*sh + a, q*sw + b] (K zero-padded at the
    bottom/right to a multiple of the stride). Stride 1 returns K unchanged.
    """
    if weight.dim() != 4:
        raise ValueError(f"a conv weight is 4-D (C_out, C_in, h, w), got shape {tuple(weight.shape)}")
    sh, sw = _pair(stride)
    if sh == 1 and sw == 1:
        return weight
    c_out, c_in, h, w = weight.shape
    hp, wp = -(-h // sh), -(-w // sw)
    k = F.pad(weight, (0, wp * sw - w, 0, hp * sh - h))
    k = k.reshape(c_out, c_in, hp, sh, wp, sw).permute(0, 1, 3, 5, 2, 4)
    return k.reshape(c_out, c_in * sh * sw, hp, wp)


def _dft_matrix(size: int, taps: int, dtype, device) -> torch.Tensor:
    """E[f, p] = exp(-2 pi i f p / size) for f < size, p < taps. Kernels longer
    than the grid wrap around, as a circular convolution does."""
    f = torch.arange(size, device=device, dtype=torch.float64)[:, None]
    p = torch.arange(taps, device=device, dtype=torch.float64)[None, :]
    return torch.polar(torch.ones((), dtype=torch.float64, device=device), -2 * math.pi * f * p / size).to(dtype)


def _kernel_dft(weight: torch.Tensor, grid: Tuple[int, int], rows: Optional[slice] = None,
                cols: Optional[slice] = None) -> torch.Tensor:
    """2-D DFT of the kernel's spatial dims on a (gh, gw) grid (with wrap),
    optionally only for the frequency rows/cols given: (C_out, C_in, gh', gw'),
    complex128."""
    w = weight.detach().to(torch.complex128)
    eh = _dft_matrix(grid[0], w.shape[2], w.dtype, w.device)
    ew = _dft_matrix(grid[1], w.shape[3], w.dtype, w.device)
    if rows is not None:
        eh = eh[rows]
    if cols is not None:
        ew = ew[cols]
    # (for the small kernels of conv layers two matrix products beat a padded FFT)
    return torch.matmul(eh, torch.matmul(w, ew.T))


#: Complex entries per block of frequency matrices (bounds the memory of the
#: exact computation to about 16 bytes times this).
_EXACT_BLOCK = 1 << 22


def _frequency_blocks(weight_shape, grid: Tuple[int, int], half: bool):
    """Row slices of the frequency grid, so that a block of C_out x C_in'
    matrices holds at most ``_EXACT_BLOCK`` entries."""
    gw = grid[1] // 2 + 1 if half else grid[1]
    per_row = max(1, int(weight_shape[0]) * int(weight_shape[1]) * gw)
    step = max(1, _EXACT_BLOCK // per_row)
    return [slice(i, min(i + step, grid[0])) for i in range(0, grid[0], step)], slice(0, gw)


def _check_divisible(input_size, stride) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    H, W = _pair(input_size)
    sh, sw = _pair(stride)
    if H % sh or W % sw:
        raise ValueError(f"input size {(H, W)} is not a multiple of the stride {(sh, sw)}")
    return (H, W), (sh, sw)


# ----------------------------------------------------------------------------
# Exact singular values of circular convolutions
# ----------------------------------------------------------------------------

def circular_singular_values(weight: torch.Tensor, input_size: IntPair, stride: IntPair = 1) -> torch.Tensor:
    """All singular values (float64, descending) of the circular convolution
    ``x -> conv2d(circular_pad(x), weight, stride)`` on a (C_in, H, W) input.

    Stride 1: FFT the kernel to (H, W); the singular values are the union over
    frequencies of those of the C_out x C_in matrices P(w) (Sedghi et al.).
    Stride s: the same on the (H/sh, W/sw) grid with the polyphase kernel K'
    (C_out x C_in*sh*sw matrices). The circular padding amount only shifts
    the input, so it does not change the singular values. H and W must be
    multiples of the stride; kernels larger than the grid wrap around.
    """
    (H, W), (sh, sw) = _check_divisible(input_size, stride)
    k = reshape_strided_kernel(weight.detach(), (sh, sw))
    grid = (H // sh, W // sw)
    blocks, cols = _frequency_blocks(k.shape, grid, half=False)
    out = []
    for rows in blocks:
        mats = _kernel_dft(k, grid, rows, cols).permute(2, 3, 0, 1).contiguous()  # (rows, gw, C_out, C_in')
        out.append(torch.linalg.svdvals(mats).reshape(-1))
    return torch.sort(torch.cat(out), descending=True).values


def circular_spectral_norm(weight: torch.Tensor, input_size: IntPair, stride: IntPair = 1) -> float:
    """Largest singular value of the circular convolution (see
    ``circular_singular_values``): the largest eigenvalue of the smaller Gram
    matrix per frequency, over half the frequencies (a real kernel has
    P(-w) = conj(P(w))), in blocks of bounded memory."""
    (H, W), (sh, sw) = _check_divisible(input_size, stride)
    k = reshape_strided_kernel(weight.detach(), (sh, sw))
    grid = (H // sh, W // sw)
    blocks, cols = _frequency_blocks(k.shape, grid, half=True)
    best = 0.0
    for rows in blocks:
        p = _kernel_dft(k, grid, rows, cols).permute(2, 3, 0, 1)
        g = p @ p.mH if p.shape[-2] <= p.shape[-1] else p.mH @ p
        best = max(best, float(torch.linalg.eigvalsh(g.contiguous())[..., -1].max()))
    return math.sqrt(max(best, 0.0))


# ----------------------------------------------------------------------------
# The TN bound (HOPM over complex unit vectors)
# ----------------------------------------------------------------------------

def _unit(v: torch.Tensor) -> torch.Tensor:
    n = torch.linalg.vector_norm(v)
    return v / n if n > 0 else v


def _random_unit(n: int, cdtype, device, generator) -> torch.Tensor:
    real = torch.float64 if cdtype == torch.complex128 else torch.float32
    z = torch.randn(n, 2, dtype=real, device=device, generator=generator)
    return _unit(torch.view_as_complex(z.contiguous()))


def _fourier_unit(n: int, theta: float, cdtype, device) -> torch.Tensor:
    real = torch.float64 if cdtype == torch.complex128 else torch.float32
    p = torch.arange(n, dtype=real, device=device)
    return torch.polar(torch.full_like(p, 1.0 / math.sqrt(n)), theta * p).to(cdtype)


def _real_matmul_complex(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """m @ v for a real matrix m and a complex matrix v, as one real matrix
    product with v's real and imaginary parts side by side."""
    n = v.shape[1]
    r = m @ torch.cat([v.real, v.imag], 1)
    return torch.complex(r[:, :n], r[:, n:])


def _row_unit(v: torch.Tensor) -> torch.Tensor:
    n = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return v / torch.where(n > 0, n, torch.ones_like(n))


def hopm_batch(tensor: torch.Tensor, vectors: Sequence[torch.Tensor], *, n_iter: int = 100, tol: float = 1e-8
               ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Alternating power iteration (HOPM) for ``max |T(u1, u2, u3, u4)|`` over
    complex unit vectors, for a real 4-way tensor T, from R starts at once
    (``vectors``: four (R, d_i) complex tensors).

    Each sweep maximises over one vector with the others fixed,
    u1 = conj(T(., u2, u3, u4)) / norm, then u2, u3, u4 likewise, so every
    start's value never decreases; it stops at a local maximum, after
    ``n_iter`` sweeps or when no value changes by more than ``tol``
    (relative). Complex vectors, not real ones, because the bound's proof
    evaluates the kernel at Fourier vectors; for a real tensor the complex
    spectral norm is >= the real one. A sweep reads T twice, as a
    (d1*d2, d3*d4) real matrix (T(., ., u3, u4) and T(u1, u2, ., .) are
    matrix products with all starts side by side).

    Returns the values (R,) (float64, on T's device) and the detached vectors.
    """
    t = tensor.detach()
    real = torch.float64 if t.dtype == torch.float64 else torch.float32
    cdtype = torch.complex128 if real == torch.float64 else torch.complex64
    d1, d2, d3, d4 = (int(s) for s in t.shape)
    m = t.to(real).reshape(d1 * d2, d3 * d4)
    mt = m.T
    u1, u2, u3, u4 = [_row_unit(v.detach().to(device=t.device, dtype=cdtype)) for v in vectors]
    r = u1.shape[0]
    sigma = torch.zeros(r, dtype=real, device=t.device)
    for _ in range(max(1, n_iter)):
        k34 = (u3[:, :, None] * u4[:, None, :]).reshape(r, d3 * d4)
        a = _real_matmul_complex(m, k34.T).T.reshape(r, d1, d2)          # T(., ., u3, u4)
        u1 = _row_unit(torch.conj(torch.einsum("rij,rj->ri", a, u2)))
        u2 = _row_unit(torch.conj(torch.einsum("ri,rij->rj", u1, a)))
        k12 = (u1[:, :, None] * u2[:, None, :]).reshape(r, d1 * d2)
        b = _real_matmul_complex(mt, k12.T).T.reshape(r, d3, d4)         # T(u1, u2, ., .)
        u3 = _row_unit(torch.conj(torch.einsum("rkl,rl->rk", b, u4)))
        v = torch.einsum("rk,rkl->rl", u3, b)
        new_sigma = torch.linalg.vector_norm(v, dim=1)
        u4 = _row_unit(torch.conj(v))
        done = bool(((new_sigma - sigma).abs() <= tol * new_sigma.clamp_min(1e-30)).all())
        sigma = new_sigma
        if done:
            break
    return sigma.to(torch.float64), [u1, u2, u3, u4]


def hopm(tensor: torch.Tensor, vectors: Optional[Sequence[torch.Tensor]] = None, *, n_iter: int = 100,
         tol: float = 1e-8, generator: Optional[torch.Generator] = None) -> Tuple[float, List[torch.Tensor]]:
    """HOPM from one start (``vectors``: four 1-D complex tensors, random if
    None); see ``hopm_batch``. Returns the value and the four vectors."""
    if vectors is None:
        vectors = hopm_starts(tensor.shape, restarts=1, fourier=False, dtype=tensor.dtype, device=tensor.device,
                              generator=generator)
    else:
        vectors = [v.reshape(1, -1) for v in vectors]
    sigma, vecs = hopm_batch(tensor, vectors, n_iter=n_iter, tol=tol)
    return float(sigma[0]), [v[0] for v in vecs]


def hopm_start_count(shape: Sequence[int], *, restarts: int = 3, fourier: bool = True) -> int:
    """How many starts ``hopm_starts`` makes for a tensor of this shape."""
    n = ((2 if int(shape[2]) > 1 else 1) * (2 if int(shape[3]) > 1 else 1)) if fourier else 0
    return n + int(restarts)


def hopm_starts(shape: Sequence[int], *, restarts: int = 3, fourier: bool = True, dtype=torch.float32,
                device=None, generator: Optional[torch.Generator] = None) -> List[torch.Tensor]:
    """Starting vectors for HOPM, four (R, d_i) complex tensors: first (u3, u4)
    at the Fourier vectors of angles {0, pi} x {0, pi} (the constant and the
    alternating pattern; u1, u2 random), then ``restarts`` fully random
    starts. On random kernels the Fourier starts reach the maximum far more
    often than random ones do."""
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    d1, d2, d3, d4 = (int(s) for s in shape)
    rows: List[List[torch.Tensor]] = []
    if fourier:
        for a in ((0.0, math.pi) if d3 > 1 else (0.0,)):
            for b in ((0.0, math.pi) if d4 > 1 else (0.0,)):
                rows.append([_random_unit(d1, cdtype, device, generator), _random_unit(d2, cdtype, device, generator),
                             _fourier_unit(d3, a, cdtype, device), _fourier_unit(d4, b, cdtype, device)])
    for _ in range(restarts):
        rows.append([_random_unit(d, cdtype, device, generator) for d in (d1, d2, d3, d4)])
    if not rows:
        raise ValueError("HOPM needs at least one start (restarts >= 1 or fourier starts)")
    return [torch.stack([row[i] for row in rows]) for i in range(4)]


def tensor_spectral_norm(tensor: torch.Tensor, *, n_iter: int = 100, restarts: int = 3, fourier_starts: bool = True,
                         tol: float = 1e-8, probe_iters: int = 20, keep: int = 2,
                         generator: Optional[torch.Generator] = None) -> Tuple[float, List[torch.Tensor]]:
    """``||T||_sigma`` (complex) of a real 4-way tensor: HOPM from every start
    of ``hopm_starts`` (run side by side), the largest value kept. HOPM finds
    local maxima, so this is a lower estimate of the true maximum that the
    starts tighten. After ``probe_iters`` sweeps only the ``keep`` best starts
    go on to ``n_iter`` sweeps (``probe_iters=0``: all of them). Returns the
    value and the best start's four vectors."""
    starts = hopm_starts(tensor.shape, restarts=restarts, fourier=fourier_starts, dtype=tensor.dtype,
                         device=tensor.device, generator=generator)
    if 0 < probe_iters < n_iter and keep < starts[0].shape[0]:
        sigma, vecs = hopm_batch(tensor, starts, n_iter=probe_iters, tol=tol)
        top = torch.argsort(sigma, descending=True)[: max(1, keep)].to(vecs[0].device)
        sigma, vecs = hopm_batch(tensor, [v[top] for v in vecs], n_iter=n_iter - probe_iters, tol=tol)
    else:
        sigma, vecs = hopm_batch(tensor, starts, n_iter=n_iter, tol=tol)
    best = int(torch.argmax(sigma))
    return float(sigma[best]), [v[best] for v in vecs]


def tn_scale(weight_shape: Sequence[int], stride: IntPair = 1) -> float:
    """sqrt(h' * w') for a kernel shape and stride."""
    sh, sw = _pair(stride)
    h, w = int(weight_shape[2]), int(weight_shape[3])
    return math.sqrt(-(-h // sh) * -(-w // sw))


def tn_value(weight: torch.Tensor, vectors: Sequence[torch.Tensor], stride: IntPair = 1) -> torch.Tensor:
    """``sqrt(h'w') * |K'(u1, u2, u3, u4)|`` with fixed vectors: differentiable
    in ``weight``. With the HOPM vectors of K' this is the TN bound, and its
    gradient is the bound's gradient (the vectors are at a maximum)."""
    k = reshape_strided_kernel(weight, stride)
    cdtype = torch.complex128 if k.dtype == torch.float64 else torch.complex64
    u = [v.to(device=k.device, dtype=cdtype) for v in vectors]
    val = torch.einsum("abcd,a,b,c,d->", k.to(cdtype), *u)
    return torch.abs(val) * tn_scale(weight.shape, stride)


def tn_bound(weight: torch.Tensor, stride: IntPair = 1, *, n_iter: int = 100, restarts: int = 3,
             fourier_starts: bool = True, tol: float = 1e-8, generator: Optional[torch.Generator] = None,
             differentiable: bool = False) -> Union[float, torch.Tensor]:
    """The TN bound ``sqrt(h'w') * ||K'||_sigma`` on the spectral norm of a
    convolution with ``weight`` and ``stride``, for any padding. A float, or
    with ``differentiable=True`` a 0-d tensor carrying ``weight``'s gradient.
    Independent of the input size."""
    k = reshape_strided_kernel(weight.detach(), stride)
    sigma, vecs = tensor_spectral_norm(k, n_iter=n_iter, restarts=restarts, fourier_starts=fourier_starts,
                                       tol=tol, generator=generator)
    if differentiable:
        return tn_value(weight, vecs, stride)
    return sigma * tn_scale(weight.shape, stride)


# ----------------------------------------------------------------------------
# F4 and flat bounds
# ----------------------------------------------------------------------------

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
    """Fantastic-four bound ``sqrt(h'w') * min_i ||R_i(K')||_2`` (Singla & Feizi
    2021), applied to the stride-reshaped kernel as in the TN paper."""
    w = weight if differentiable else weight.detach().to(torch.float64)
    norms = torch.stack([_matrix_spectral_norm(m) for m in f4_matricizations(w, stride)])
    value = norms.min() * tn_scale(weight.shape, stride)
    return value if differentiable else float(value)


def flat_bound(weight: torch.Tensor, stride: IntPair = 1) -> float:
    """``sqrt(h'w') * ||W_flat||_2`` with W_flat = (C_out, C_in*h*w)."""
    w = weight.detach().to(torch.float64)
    return float(_matrix_spectral_norm(w.reshape(w.shape[0], -1))) * tn_scale(weight.shape, stride)


def all_bounds(weight: torch.Tensor, stride: IntPair = 1, input_size: Optional[IntPair] = None, *,
               generator: Optional[torch.Generator] = None, tn_iters: int = 100,
               tn_restarts: int = 3) -> Dict[str, Optional[float]]:
    """{"exact_circular", "tn_bound", "f4_bound", "flat_bound"} of one kernel
    (exact only when ``input_size`` is given and divisible by the stride; TN
    in the kernel's own precision, the others in float64)."""
    out: Dict[str, Optional[float]] = {"exact_circular": None}
    if input_size is not None:
        H, W = _pair(input_size)
        sh, sw = _pair(stride)
        if H % sh == 0 and W % sw == 0:
            out["exact_circular"] = circular_spectral_norm(weight, (H, W), stride)
    out["tn_bound"] = float(tn_bound(weight.detach(), stride, n_iter=tn_iters, restarts=tn_restarts,
                                     generator=generator))
    out["f4_bound"] = float(f4_bound(weight, stride))
    out["flat_bound"] = flat_bound(weight, stride)
    return out


# ----------------------------------------------------------------------------
# The actual layer as a linear operator
# ----------------------------------------------------------------------------

def _layer_device_dtype(layer: nn.Module) -> Tuple[torch.device, torch.dtype]:
    for t in list(layer.parameters()) + list(layer.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


class _EvalMode:
    """Put a module in eval mode for the block, restoring each submodule's flag."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self.module

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag
        return False


def layer_spectral_norm(layer: nn.Module, input_shape: Sequence[int], *, n_iter: int = 100, tol: float = 1e-6,
                        generator: Optional[torch.Generator] = None) -> float:
    """Largest singular value of the layer's linear map on a (C, H, W) input,
    by power iteration on L^T L, where L(x) = layer(x) - layer(0) (so a bias or
    an affine bias drops out) and L^T comes from autograd (a vector-Jacobian
    product). The layer runs in eval mode (frozen statistics, cached weights;
    no state is updated). The estimate rises monotonically towards the norm;
    it stops after ``n_iter`` steps or when it changes by less than ``tol``
    (relative)."""
    device, dtype = _layer_device_dtype(layer)
    shape = (1,) + tuple(int(s) for s in input_shape)
    with _EvalMode(layer):
        with torch.no_grad():
            y0 = layer(torch.zeros(shape, device=device, dtype=dtype))
        x = torch.randn(shape, device=device, dtype=dtype, generator=generator)
        x = x / torch.linalg.vector_norm(x)
        sigma = 0.0
        for _ in range(max(1, n_iter)):
            x.requires_grad_(True)
            with torch.enable_grad():
                y = layer(x) - y0
                (g,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
            new_sigma = float(torch.linalg.vector_norm(y.detach()))
            gn = torch.linalg.vector_norm(g)
            if gn == 0:
                return 0.0
            x = (g / gn).detach()
            if abs(new_sigma - sigma) <= tol * new_sigma:
                sigma = new_sigma
                break
            sigma = new_sigma
        with torch.no_grad():
            sigma = max(sigma, float(torch.linalg.vector_norm(layer(x) - y0)))
    return sigma


def weight_is_operator(layer: nn.Module, input_shape: Sequence[int], *, rtol: float = 1e-4) -> bool:
    """True when ``conv2d(x, layer.weight, stride, padding, ...)`` reproduces
    the layer's linear map on a random input: then bounds computed from the
    weight are bounds of the layer itself. False for layers whose operator is
    more than their ``weight`` (ConvNorm's filter, Cayley's Q, ...)."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        return False
    device, dtype = _layer_device_dtype(layer)
    shape = (2,) + tuple(int(s) for s in input_shape)
    try:
        with _EvalMode(layer), torch.no_grad():
            x = torch.randn(shape, device=device, dtype=dtype)
            y = layer(x) - layer(torch.zeros_like(x))
            w = layer.weight
            stride = _pair(getattr(layer, "stride", 1))
            padding = getattr(layer, "padding", 0)
            mode = getattr(layer, "padding_mode", "zeros")
            if isinstance(padding, str) or mode != "zeros":
                rpad = getattr(layer, "_reversed_padding_repeated_twice", None)
                if rpad is None:
                    return False
                x = F.pad(x, rpad, mode=mode if mode != "zeros" else "constant")
                padding = 0
            z = F.conv2d(x, w, None, stride, padding, getattr(layer, "dilation", 1), getattr(layer, "groups", 1))
    except Exception:  # noqa: BLE001 - any mismatch means "not a plain conv"
        return False
    if z.shape != y.shape:
        return False
    return bool(torch.linalg.vector_norm(z - y) <= rtol * max(float(torch.linalg.vector_norm(y)), 1e-30))


# ----------------------------------------------------------------------------
# Channel-wise condition numbers (ConvNorm paper, Figure 2)
# ----------------------------------------------------------------------------

def _cond_from_power(power: torch.Tensor) -> torch.Tensor:
    """power: (C_out, ...) squared channel singular values -> sqrt(max/min) per channel."""
    p = power.reshape(power.shape[0], -1).to(torch.float64)
    pmax = p.max(dim=1).values
    pmin = torch.maximum(p.min(dim=1).values, pmax * COND_FLOOR)
    cond = torch.sqrt(pmax / pmin)
    return torch.where(pmax > 0, cond, torch.full_like(cond, float("nan")))


def weight_channel_spectrum(weight: torch.Tensor, input_size: IntPair, stride: IntPair = 1) -> torch.Tensor:
    """(C_out, H/s, W/s): for output channel k and frequency w, the squared
    singular value ``sum_j |a_kj(w)|^2`` of channel k's circular operator
    (FFT size = the input size; with a stride, the polyphase kernel K' on
    the (H/s, W/s) grid, i.e. the eigenvalues of A_k A_k^T)."""
    (H, W), (sh, sw) = _check_divisible(input_size, stride)
    k = reshape_strided_kernel(weight.detach(), (sh, sw))
    grid = (H // sh, W // sw)
    out = []
    for rows in _frequency_blocks(k.shape, grid, half=False)[0]:
        spec = _kernel_dft(k, grid, rows)
        out.append((spec.real ** 2 + spec.imag ** 2).sum(dim=1))
    return torch.cat(out, dim=1)


def weight_channel_condition(weight: torch.Tensor, input_size: IntPair, stride: IntPair = 1) -> torch.Tensor:
    """Per output channel: max over frequencies / min over frequencies of
    ``sqrt(sum_j |a_kj(w)|^2)`` (ConvNorm paper, Figure 2, which uses stride
    1). 1 = an isometric (tight-frame) channel."""
    return _cond_from_power(weight_channel_spectrum(weight, input_size, stride))


#: Input elements per batch of impulse probes (bounds the probing memory).
_PROBE_BLOCK = 1 << 24


def layer_channel_spectrum(layer: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """The same spectrum for the actual layer: for each output channel k, the
    eigenvalues of A_k A_k^T (A_k = the map from the input to output channel
    k). A_k^T applied to an impulse at the centre of the output gives the
    channel's (effective) kernels; split into the stride's polyphase parts and
    Fourier transformed on the (H/s, W/s) grid, the summed squared magnitudes
    are those eigenvalues. Exact for circular layers; for zero-padded ones
    exact as long as the kernel fits inside the input (plain convs), and the
    interior behaviour for filters with a wide support (ConvNorm). One
    vector-Jacobian product for all channels; eval mode."""
    device, dtype = _layer_device_dtype(layer)
    C, H, W = (int(s) for s in input_shape)
    with _EvalMode(layer):
        x = torch.zeros((1, C, H, W), device=device, dtype=dtype)
        with torch.no_grad():
            c_out, ho, wo = layer(x).shape[1:]
        sh, sw = max(1, round(H / ho)), max(1, round(W / wo))
        polyphase = H % sh == 0 and W % sw == 0 and (sh > 1 or sw > 1)
        # channels in chunks: each needs one input copy in the batch
        chunk = max(1, min(c_out, _PROBE_BLOCK // max(1, C * H * W)))
        powers = []
        for start in range(0, c_out, chunk):
            ks = torch.arange(start, min(start + chunk, c_out), device=device)
            xb = torch.zeros((len(ks), C, H, W), device=device, dtype=dtype, requires_grad=True)
            with torch.enable_grad():
                y = layer(xb)
                cot = torch.zeros_like(y)
                cot[torch.arange(len(ks), device=device), ks, ho // 2, wo // 2] = 1
                (g,) = torch.autograd.grad(y, xb, grad_outputs=cot)
            g = g.detach().to(torch.float64)
            if polyphase:
                g = g.reshape(len(ks), C, H // sh, sh, W // sw, sw).permute(0, 1, 3, 5, 2, 4)
                g = g.reshape(len(ks), C * sh * sw, H // sh, W // sw)
            spec = torch.fft.fft2(g)
            powers.append((spec.real ** 2 + spec.imag ** 2).sum(dim=1))
    return torch.cat(powers)


def layer_channel_condition(layer: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """Per output channel condition number of the actual layer operator (see
    ``layer_channel_spectrum``)."""
    return _cond_from_power(layer_channel_spectrum(layer, input_shape))


# ----------------------------------------------------------------------------
# Model report
# ----------------------------------------------------------------------------

def _conv_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if getattr(m, "conv_role", None) is not None]


def _as_list(v) -> Optional[list]:
    if v is None:
        return None
    if isinstance(v, str):
        return v  # type: ignore[return-value]
    if isinstance(v, int):
        return [v, v]
    return [int(x) for x in v]


def _finite(x: float) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def layer_shapes(model: nn.Module, input_shape: Sequence[int]) -> Dict[str, Tuple[tuple, tuple]]:
    """{name: ((C, H, W) input, (C, H, W) output)} of every tagged conv, by a
    forward pass on zeros in eval mode with forward hooks."""
    device, dtype = _layer_device_dtype(model)
    shapes: Dict[str, Tuple[tuple, tuple]] = {}
    handles = []
    for name, module in _conv_layers(model):
        def hook(mod, inputs, output, _name=name):
            shapes[_name] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))
        handles.append(module.register_forward_hook(hook))
    try:
        with _EvalMode(model), torch.no_grad():
            model(torch.zeros((1,) + tuple(int(s) for s in input_shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    return shapes


def model_report(model: nn.Module, input_shape: Sequence[int], *, power_iters: int = 100, power_tol: float = 1e-5,
                 tn_iters: int = 100, tn_restarts: int = 3, exact: bool = True, seed: int = 0) -> Dict[str, Any]:
    """Per-layer spectral norms, bounds and condition numbers of every module
    with a ``conv_role`` attribute, for inputs of ``input_shape`` = (C, H, W).

    Returns plain JSON data (store it as ``record["lipschitz"]``)::

        {"input_shape": [C, H, W],
         "settings": {"power_iters", "power_tol", "tn_iters", "tn_restarts", "seed",
                      "channel_cond": "mean over output channels"},
         "layers": [                       # model order
           {"name": str, "role": str, "type": class name,
            "shape": [C_out, C_in, h, w] | None,   # of the module's `weight`, if it has one
            "stride": [sh, sw] | None, "padding": [ph, pw] | str | None,
            "in_size": [H, W], "out_size": [H_out, W_out],
            "spectral_norm": float,          # power iteration on the actual layer (eval mode)
            "exact_circular": float | None,  # exact norm of the circular conv with `weight`
            "tn_bound": float | None,        # sqrt(h'w') ||K'||_sigma of `weight`
            "f4_bound": float | None,
            "flat_bound": float | None,      # sqrt(h'w') ||W_flat||_2
            "bounds_of": "layer" | "weight" | None,
            "channel_cond": float | None,    # actual operator, mean over output channels
            "channel_cond_max": float | None,  # actual operator, worst channel
            "channel_cond_preaffine": float | None,  # layers with an `affine` submodule (ConvNorm):
                                                     # the operator without it, mean over channels
            "channel_cond_weight": float | None},  # `weight`, paper definition (stride 1)
           ...],
         "lip_product_log10": float,        # sum over layers of log10(spectral_norm)
         "mean_layer_spectral_norm": float}

    ``bounds_of`` says what the weight-based columns bound: "layer" when
    ``conv2d(x, weight)`` reproduces the layer (plain, SN, ONI, OCNN, tn), so
    exact <= ... hold for the layer (exact: its circular version); "weight"
    when the layer is more than its weight (ConvNorm, Cayley), the columns
    then describe the raw kernel only, and ``exact_circular`` is left out;
    None (and no weight columns) when the module has no 4-D ``weight`` whose
    input channels match the layer's input (Cayley's strided layers hold a
    space-to-depth kernel).
    """
    device, _ = _layer_device_dtype(model)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    cpu_gen = torch.Generator()
    cpu_gen.manual_seed(seed)
    shapes = layer_shapes(model, input_shape)
    rows: List[Dict[str, Any]] = []
    for name, module in _conv_layers(model):
        if name not in shapes:  # not reached by the forward pass
            continue
        (c_in, H, W), (_, ho, wo) = shapes[name]
        in_shape = (c_in, H, W)
        stride = _pair(getattr(module, "stride", 1)) if getattr(module, "stride", None) is not None else None
        padding = getattr(module, "padding", None)
        with _EvalMode(module), torch.no_grad():
            weight = getattr(module, "weight", None)
        # a weight-based column needs a conv kernel of this layer's geometry
        # (not, e.g., Cayley's parameter after its space-to-depth stride)
        has_weight = (isinstance(weight, torch.Tensor) and weight.dim() == 4
                      and int(weight.shape[1]) * int(getattr(module, "groups", 1)) == int(c_in))
        row: Dict[str, Any] = {
            "name": name,
            "role": module.conv_role,
            "type": type(module).__name__,
            "shape": [int(s) for s in weight.shape] if isinstance(weight, torch.Tensor) else None,
            "stride": list(stride) if stride is not None else None,
            "padding": _as_list(padding),
            "in_size": [int(H), int(W)],
            "out_size": [int(ho), int(wo)],
        }
        row["spectral_norm"] = layer_spectral_norm(module, in_shape, n_iter=power_iters, tol=power_tol, generator=gen)
        row.update({"exact_circular": None, "tn_bound": None, "f4_bound": None, "flat_bound": None,
                    "bounds_of": None})
        is_op = False
        if has_weight:
            is_op = weight_is_operator(module, in_shape)
            b = all_bounds(weight.detach(), stride or 1, (H, W) if (exact and is_op) else None,
                           generator=cpu_gen if weight.device.type == "cpu" else None,
                           tn_iters=tn_iters, tn_restarts=tn_restarts)
            row.update(b)
            row["bounds_of"] = "layer" if is_op else "weight"
        sh, sw = stride or (1, 1)
        if is_op and H % sh == 0 and W % sw == 0:
            # the layer is conv(weight): the same spectrum, from the kernel (cheaper than probing)
            cond = weight_channel_condition(weight.detach(), (H, W), (sh, sw))
        else:
            cond = layer_channel_condition(module, in_shape)
        row["channel_cond"] = _finite(float(cond.nanmean())) if cond.numel() else None
        row["channel_cond_max"] = _finite(float(cond[~cond.isnan()].max())) if (~cond.isnan()).any() else None
        row["channel_cond_preaffine"] = None
        if isinstance(getattr(module, "affine", None), nn.Module):
            # ConvNorm: the normalized operator before its learnable depthwise affine
            saved = module.affine
            try:
                module.affine = None
                pre = layer_channel_condition(module, in_shape)
            finally:
                module.affine = saved
            row["channel_cond_preaffine"] = _finite(float(pre.nanmean())) if pre.numel() else None
        row["channel_cond_weight"] = None
        if has_weight:
            same = is_op and (sh, sw) == (1, 1)  # then it is the column just computed
            cw = cond if same else weight_channel_condition(weight.detach(), (H, W))
            row["channel_cond_weight"] = _finite(float(cw.nanmean()))
        rows.append(row)
    norms = [r["spectral_norm"] for r in rows]
    positive = all(n > 0 for n in norms)
    return {
        "input_shape": [int(s) for s in input_shape],
        "settings": {"power_iters": power_iters, "power_tol": power_tol, "tn_iters": tn_iters,
                     "tn_restarts": tn_restarts, "seed": seed, "channel_cond": "mean over output channels"},
        "layers": rows,
        "lip_product_log10": (sum(math.log10(n) for n in norms) if positive else None) if norms else 0.0,
        "mean_layer_spectral_norm": (sum(norms) / len(norms)) if norms else None,
    }


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v)
    return str(v)


REPORT_COLUMNS = [
    ("layer", "name"), ("role", "role"), ("shape", "shape"), ("s", "stride"), ("p", "padding"),
    ("in", "in_size"), ("sigma (power)", "spectral_norm"), ("exact circ", "exact_circular"),
    ("TN", "tn_bound"), ("F4", "f4_bound"), ("flat", "flat_bound"), ("bounds of", "bounds_of"),
    ("cond (layer)", "channel_cond"), ("cond max", "channel_cond_max"),
    ("cond (pre-affine)", "channel_cond_preaffine"), ("cond (weight)", "channel_cond_weight"),
]


def format_report(report: Dict[str, Any]) -> str:
    """A markdown table of ``model_report``'s rows plus the totals."""
    lines = ["| " + " | ".join(h for h, _ in REPORT_COLUMNS) + " |",
             "|" + "|".join("---" for _ in REPORT_COLUMNS) + "|"]
    for row in report["layers"]:
        cells = []
        for _, key in REPORT_COLUMNS:
            v = row.get(key)
            if key == "stride" and isinstance(v, list) and len(set(v)) == 1:
                v = v[0]
            if key == "padding" and isinstance(v, list) and len(set(v)) == 1:
                v = v[0]
            cells.append(_fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"input shape {_fmt(report.get('input_shape'))}; {len(report['layers'])} conv layers; "
                 f"lip_product_log10 = {_fmt(report.get('lip_product_log10'), 4)}; "
                 f"mean_layer_spectral_norm = {_fmt(report.get('mean_layer_spectral_norm'), 4)}")
    lines.append("sigma (power): power iteration on the actual layer; exact circ / TN / F4 / flat: from the "
                 "module's weight (bounds of the layer when 'bounds of' = layer); cond: channel-wise condition "
                 "number, mean over output channels.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Plot (ConvNorm paper, Figure 2 right)
# ----------------------------------------------------------------------------

def plot_layer_norms(report: Union[Dict[str, Any], Dict[str, Dict[str, Any]]], path, *, title: Optional[str] = None,
                     key: str = "spectral_norm") -> Path:
    """PNG of the per-layer spectral norm (``key``) against layer index. ``report``
    is one ``model_report`` dict, or {label: report} to overlay several models.
    Uses matplotlib's Agg canvas directly (no display, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    reports = {"": report} if "layers" in report else dict(report)
    fig = Figure(figsize=(8, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names: List[str] = []
    for label, rep in reports.items():
        vals = [r.get(key) for r in rep["layers"]]
        xs = [i + 1 for i, v in enumerate(vals) if v is not None]
        ys = [v for v in vals if v is not None]
        ax.plot(xs, ys, marker="o", label=label or key)
        if len(rep["layers"]) > len(names):
            names = [r["name"] for r in rep["layers"]]
    ax.set_xlabel("layer")
    ax.set_ylabel("spectral norm" if key == "spectral_norm" else key)
    ax.set_xticks(range(1, len(names) + 1))
    ax.set_xticklabels(names, rotation=70, fontsize=6)
    ax.grid(alpha=0.3)
    ax.set_title(title or "layer-wise spectral norm (power iteration on each conv layer)")
    if len(reports) > 1 or next(iter(reports)):
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# ----------------------------------------------------------------------------
# Table 9: condition number improvement over vanilla, from records
# ----------------------------------------------------------------------------

def _record_label(rec: Dict[str, Any]) -> str:
    label = str(rec.get("normalizer"))
    opts = rec.get("normalizer_options") or {}
    if opts:
        label += "(" + ",".join(f"{k}={opts[k]}" for k in sorted(opts)) + ")"
    if rec.get("batchnorm"):
        label += "+BN"
    return label


def _setting(rec: Dict[str, Any]) -> tuple:
    return tuple(rec.get(k) for k in ("dataset", "arch", "train_method", "train_eps"))


def table9(records: Iterable[Dict[str, Any]], *, key: str = "channel_cond", baseline: str = "vanilla",
           mode: str = "difference", fallback: Optional[str] = "channel_cond") -> List[Dict[str, Any]]:
    """Mean improvement of the layer-wise condition number over ``baseline``
    (ConvNorm paper, Table 9; larger is better), from finished run records
    carrying ``record["lipschitz"]`` (``model_report``'s layout).

    Records are grouped by setting (dataset, arch, train_method, train_eps).
    Within a setting, the baseline's per-layer condition number ``key`` is
    averaged over its runs (seeds), preferring baseline runs with the same
    ``batchnorm`` flag as the compared run. A run's improvement is the mean
    over the layers both have (matched by name) of
    ``cond_baseline - cond_run`` (``mode="difference"``) or
    ``log10(cond_baseline / cond_run)`` (``mode="log_ratio"``). Rows: one per
    (setting, normalizer label), the mean and standard deviation over runs.
    A layer without ``key`` (e.g. ``channel_cond_preaffine`` on a plain conv)
    uses ``fallback`` instead, so ConvNorm's pre-affine value can be
    compared with vanilla's plain one.
    """
    def value(layer):
        v = layer.get(key)
        return layer.get(fallback) if v is None and fallback else v

    if mode not in ("difference", "log_ratio"):
        raise ValueError(f"mode must be 'difference' or 'log_ratio', got {mode!r}")
    usable = [r for r in records if r.get("status", "finished") == "finished"
              and isinstance(r.get("lipschitz"), dict) and r["lipschitz"].get("layers")]
    by_setting: Dict[tuple, List[Dict[str, Any]]] = defaultdict(list)
    for r in usable:
        by_setting[_setting(r)].append(r)
    rows: List[Dict[str, Any]] = []
    for setting, recs in by_setting.items():
        base = {}
        for bn in (False, True):
            layer_vals: Dict[str, List[float]] = defaultdict(list)
            for r in recs:
                if r.get("normalizer") == baseline and bool(r.get("batchnorm")) == bn:
                    for layer in r["lipschitz"]["layers"]:
                        if value(layer) is not None:
                            layer_vals[layer["name"]].append(float(value(layer)))
            if layer_vals:
                base[bn] = {n: sum(v) / len(v) for n, v in layer_vals.items()}
        if not base:
            continue
        per_label: Dict[str, List[float]] = defaultdict(list)
        for r in recs:
            if r.get("normalizer") == baseline:
                continue
            ref = base.get(bool(r.get("batchnorm"))) or next(iter(base.values()))
            diffs = []
            for layer in r["lipschitz"]["layers"]:
                v, b = value(layer), ref.get(layer["name"])
                if v is None or b is None:
                    continue
                if mode == "difference":
                    diffs.append(b - float(v))
                elif v > 0 and b > 0:
                    diffs.append(math.log10(b / float(v)))
            if diffs:
                per_label[_record_label(r)].append(sum(diffs) / len(diffs))
        for label, vals in sorted(per_label.items()):
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            rows.append({"dataset": setting[0], "arch": setting[1], "train_method": setting[2],
                         "train_eps": setting[3], "normalizer": label, "key": key, "mode": mode,
                         "mean_improvement": mean, "std": std, "runs": len(vals)})
    return rows


def load_records(results_dir) -> List[Dict[str, Any]]:
    """Every ``runs/*/record.json`` under a results directory (or the
    directory's own ``*/record.json`` when it is a ``runs`` folder)."""
    root = Path(results_dir)
    paths = sorted(root.glob("runs/*/record.json")) or sorted(root.glob("*/record.json"))
    return [json.loads(p.read_text()) for p in paths]


def format_table9(rows: List[Dict[str, Any]]) -> str:
    lines = ["| dataset | arch | train | normalizer | mean improvement | std | runs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['arch']} | {r['train_method']} | {r['normalizer']} | "
                     f"{r['mean_improvement']:.3f} | {r['std']:.3f} | {r['runs']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------

def _find_key(obj, keys) -> Any:
    if isinstance(obj, dict):
        for k in keys:
            if k in obj:
                return obj[k]
        for v in obj.values():
            found = _find_key(v, keys)
            if found is not None:
                return found
    return None


def _input_shape_from_checkpoint(path) -> Tuple[Optional[List[int]], str]:
    """(C, H, W) from the checkpoint's ``model_meta`` (in_channels, image_size)."""
    try:
        from robustbench_convnorm.checkpoints import load_checkpoint
        meta = load_checkpoint(path).get("model_meta") or {}
        shape = [int(meta["in_channels"])] + [int(v) for v in meta["image_size"]]
        return (shape, "from the checkpoint") if len(shape) == 3 else (None, "")
    except Exception:  # noqa: BLE001 - fall back to guessing
        return None, ""


def _guess_input_shape(model: nn.Module, run_config: Optional[dict]) -> Tuple[List[int], str]:
    shape = _find_key(run_config or {}, ("input_shape", "image_shape"))
    if shape is not None and len(shape) == 3:
        return [int(s) for s in shape], "from the run config"
    channels = None
    for mod in model.modules():
        mean = getattr(mod, "mean", None)
        if isinstance(mean, torch.Tensor) and mean.dim() == 4:
            channels = int(mean.shape[1])
            break
    if channels is None:
        for _, m in _conv_layers(model):
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() == 4:
                channels = int(w.shape[1])
                break
    return [channels or 3, 32, 32], "guessed (pass --input-shape C H W to set it)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robustbench_convnorm.lipschitz",
                                     description="Print the per-layer spectral norms and bounds of a saved model.")
    parser.add_argument("checkpoint", help="a checkpoint written by the harness (checkpoint.pt); with "
                        "--table9, a results directory (its runs/*/record.json)")
    parser.add_argument("--table9", action="store_true",
                        help="print the condition-number improvement over vanilla ([CN] Table 9) of a results directory")
    parser.add_argument("--table9-mode", choices=("difference", "log_ratio"), default="difference")
    parser.add_argument("--table9-key", default="channel_cond",
                        help="the per-layer value compared (channel_cond, channel_cond_preaffine, channel_cond_weight)")
    parser.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"),
                        help="input shape (default: from the run config, else C from the model and 32x32)")
    parser.add_argument("--power-iters", type=int, default=100)
    parser.add_argument("--tn-restarts", type=int, default=3)
    parser.add_argument("--no-exact", action="store_true", help="skip the exact circular norms")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    parser.add_argument("--plot", metavar="PATH", help="also write the per-layer spectral norm plot (PNG)")
    args = parser.parse_args(argv)
    if args.table9:
        records = load_records(args.checkpoint)
        rows = table9(records, key=args.table9_key, mode=args.table9_mode)
        print(f"# Mean improvement of {args.table9_key} over vanilla ({args.table9_mode}), "
              f"{len(records)} records in {args.checkpoint}\n")
        print(format_table9(rows) if rows else "(no finished runs with Lipschitz data and a vanilla baseline)")
        return 0
    try:
        from robustbench_convnorm.checkpoints import load_model  # lazily: written by another part
    except ImportError as exc:
        print(f"cannot load checkpoints: robustbench_convnorm.checkpoints.load_model is unavailable ({exc})",
              file=sys.stderr)
        return 2
    model, run_config = load_model(args.checkpoint, device=args.device)
    if args.input_shape:
        shape, how = list(args.input_shape), "from --input-shape"
    else:
        shape, how = _input_shape_from_checkpoint(args.checkpoint)
        if shape is None:
            shape, how = _guess_input_shape(model, run_config)
    report = model_report(model, shape, power_iters=args.power_iters, tn_restarts=args.tn_restarts,
                          exact=not args.no_exact)
    print(f"# Lipschitz report: {args.checkpoint} (input shape {shape}, {how})\n")
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot:
        plot_layer_norms(report, args.plot, title=f"layer spectral norms: {Path(args.checkpoint).parent.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
