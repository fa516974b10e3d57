"""Exact spectra of circular convolutions, from the kernel alone.

A circular convolution is diagonalised by the 2-D DFT: on an H x W input
its singular values are the union, over the H*W frequencies w, of the
singular values of the C_out x C_in matrices

    P(w) = sum_{p, q} K[:, :, p, q] exp(-i (w_h p + w_w q))

(Sedghi, Gupta and Long 2019). A stride-s convolution is a stride-1
convolution of the s*s polyphase components of the input (a permutation,
hence norm-preserving) with the reshaped kernel K' of
``reshape_strided_kernel``, on the (H/s, W/s) grid.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ._util import IntPair, pair

__all__ = [
    "COND_FLOOR", "CircularWitness", "circular_norm_witness", "circular_singular_values",
    "circular_spectral_norm", "dilate_kernel", "fourier_witnesses", "reshape_strided_kernel",
    "weight_channel_condition", "weight_channel_spectrum",
]

#: Channel spectra below ``COND_FLOOR * max`` are clamped there, so a channel
#: with an exact zero in its spectrum reports a condition number of 1e6
#: instead of inf (records are JSON).
COND_FLOOR = 1e-12

#: Complex entries per block of frequency matrices (bounds the memory of the
#: exact computation to about 16 bytes times this).
_EXACT_BLOCK = 1 << 22


def reshape_strided_kernel(weight: torch.Tensor, stride: IntPair = 1) -> torch.Tensor:
    r"""The polyphase kernel K' of a strided convolution.

    .. math::
        K'[o, (c, a, b), p, q] = K[o, c, p s_h + a, q s_w + b]

    with K zero-padded at the bottom/right to a multiple of the stride. A
    stride-s convolution with K equals a stride-1 convolution with K' of the
    s*s polyphase components of the input.

    Args:
        weight: (C_out, C_in, h, w).
        stride: int or pair.

    Returns:
        (C_out, C_in*sh*sw, ceil(h/sh), ceil(w/sw)); ``weight`` itself at stride 1.

    Example::

        >>> reshape_strided_kernel(torch.randn(8, 3, 3, 3), 2).shape
        torch.Size([8, 12, 2, 2])
    """
    if weight.dim() != 4:
        raise ValueError(f"a conv weight is 4-D (C_out, C_in, h, w), got shape {tuple(weight.shape)}")
    sh, sw = pair(stride)
    if sh == 1 and sw == 1:
        return weight
    c_out, c_in, h, w = weight.shape
    hp, wp = -(-h // sh), -(-w // sw)
    k = F.pad(weight, (0, wp * sw - w, 0, hp * sh - h))
    k = k.reshape(c_out, c_in, hp, sh, wp, sw).permute(0, 1, 3, 5, 2, 4)
    return k.reshape(c_out, c_in * sh * sw, hp, wp)


def dilate_kernel(weight: torch.Tensor, dilation: IntPair = 1) -> torch.Tensor:
    """The kernel with ``dilation - 1`` zeros between taps: a dilated
    convolution with ``weight`` is a plain one with this kernel, so every
    bound and exact value of the plain kernel applies to the dilated layer.

    Example::

        >>> dilate_kernel(torch.ones(1, 1, 2, 2), 2)[0, 0]
        tensor([[1., 0., 1.],
                [0., 0., 0.],
                [1., 0., 1.]])
    """
    dh, dw = pair(dilation)
    if dh == 1 and dw == 1:
        return weight
    c_out, c_in, h, w = weight.shape
    out = weight.new_zeros(c_out, c_in, (h - 1) * dh + 1, (w - 1) * dw + 1)
    out[:, :, ::dh, ::dw] = weight
    return out


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


def _frequency_blocks(weight_shape, grid: Tuple[int, int], half: bool):
    """Row slices of the frequency grid, so that a block of C_out x C_in'
    matrices holds at most ``_EXACT_BLOCK`` entries."""
    gw = grid[1] // 2 + 1 if half else grid[1]
    per_row = max(1, int(weight_shape[0]) * int(weight_shape[1]) * gw)
    step = max(1, _EXACT_BLOCK // per_row)
    return [slice(i, min(i + step, grid[0])) for i in range(0, grid[0], step)], slice(0, gw)


def _strided_grid(weight: torch.Tensor, input_size: IntPair, stride: IntPair, groups: int):
    (H, W), (sh, sw) = pair(input_size), pair(stride)
    if H % sh or W % sw:
        raise ValueError(f"input size {(H, W)} is not a multiple of the stride {(sh, sw)}")
    if groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups={groups} does not divide the {weight.shape[0]} output channels")
    return reshape_strided_kernel(weight.detach(), (sh, sw)), (H // sh, W // sw)


def _group_blocks(mats: torch.Tensor, groups: int) -> torch.Tensor:
    """(..., C_out, C_in') frequency matrices of a grouped conv -> (..., g,
    C_out/g, C_in'): its operator is block diagonal, one block per group."""
    return mats.unflatten(-2, (groups, mats.shape[-2] // groups))


def circular_singular_values(weight: torch.Tensor, input_size: IntPair, stride: IntPair = 1,
                             groups: int = 1) -> torch.Tensor:
    """All singular values of the circular convolution
    ``x -> conv2d(circular_pad(x), weight, stride, groups=groups)`` on a
    (C_in, H, W) input: the union over frequencies of those of P(w) (module
    docstring). The amount of circular padding only shifts the input, so it
    does not change them; kernels larger than the grid wrap around.

    Args:
        weight: (C_out, C_in/groups, h, w).
        input_size: H or (H, W), multiples of the stride.
        stride: int or pair.
        groups: the conv's ``groups`` (block-diagonal frequency matrices).

    Returns:
        float64, descending, C_out*H*W/(sh*sw) values (fewer when C_in' < C_out/groups).

    Example::

        >>> w = torch.randn(4, 3, 3, 3)
        >>> circular_singular_values(w, 8)[0] == circular_spectral_norm(w, 8)
    """
    k, grid = _strided_grid(weight, input_size, stride, groups)
    blocks, cols = _frequency_blocks(k.shape, grid, half=False)
    out = []
    for rows in blocks:
        mats = _kernel_dft(k, grid, rows, cols).permute(2, 3, 0, 1).contiguous()  # (rows, gw, C_out, C_in')
        out.append(torch.linalg.svdvals(_group_blocks(mats, groups)).reshape(-1))
    return torch.sort(torch.cat(out), descending=True).values


def _largest(weight: torch.Tensor, input_size: IntPair, stride: IntPair, groups: int):
    """(largest singular value, (frequency row, column)) over half the
    frequencies (a real kernel has P(-w) = conj(P(w))), by the largest
    eigenvalue of each frequency's smaller Gram matrix, in blocks of bounded
    memory."""
    k, grid = _strided_grid(weight, input_size, stride, groups)
    blocks, cols = _frequency_blocks(k.shape, grid, half=True)
    best, where = -1.0, (0, 0)
    for rows in blocks:
        p = _group_blocks(_kernel_dft(k, grid, rows, cols).permute(2, 3, 0, 1), groups)
        g = p @ p.mH if p.shape[-2] <= p.shape[-1] else p.mH @ p
        top = torch.linalg.eigvalsh(g.contiguous())[..., -1].amax(dim=-1)  # (rows, gw): max over groups
        value, index = top.reshape(-1).max(dim=0)
        if float(value) > best:
            best, where = float(value), (rows.start + int(index) // top.shape[1], int(index) % top.shape[1])
    return math.sqrt(max(best, 0.0)), where, k, grid


def circular_spectral_norm(weight: torch.Tensor, input_size: IntPair, stride: IntPair = 1, groups: int = 1) -> float:
    """Largest singular value of the circular convolution (see
    ``circular_singular_values``, same arguments), without computing the others.

    Example::

        >>> w = torch.zeros(1, 1, 1, 2); w[..., 0] = 1; w[..., 1] = 1
        >>> circular_spectral_norm(w, 8)   # max over w of |1 + e^{-iw}|
        2.0
    """
    return _largest(weight, input_size, stride, groups)[0]


class CircularWitness(NamedTuple):
    """Where the circular norm is attained: ``value = |u1^T K'(u3, u4) u2| *
    sqrt(h'w')`` with unit Fourier vectors ``u3[p] = exp(-i w_h p)/sqrt(h')``,
    ``u4[q] = exp(-i w_w q)/sqrt(w')`` and the top singular pair of P(w)."""
    value: float
    frequency: Tuple[float, float]  # (w_h, w_w) in radians
    vectors: List[torch.Tensor]     # u1 (C_out), u2 (C_in'), u3 (h'), u4 (w'), complex128


def circular_norm_witness(weight: torch.Tensor, input_size: IntPair, stride: IntPair = 1) -> CircularWitness:
    """The circular norm and four unit vectors of K' that attain it.

    ``|K'(u1, u2, u3, u4)| * sqrt(h'w')`` equals the norm, so HOPM started
    from these vectors ends at a TN estimate that is at least the exact
    circular norm (HOPM never lowers its value). Same arguments as
    ``circular_spectral_norm`` (no groups: the TN tensor is the whole weight).

    Example::

        >>> w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
        >>> wit = circular_norm_witness(w, 8)
        >>> k = torch.einsum("abcd,a,b,c,d->", w.to(torch.complex128), *wit.vectors).abs() * 3
        >>> torch.isclose(k, torch.tensor(wit.value, dtype=torch.float64))
        tensor(True)
    """
    value, (fr, fc), k, grid = _largest(weight, input_size, stride, 1)
    p = _kernel_dft(k, grid, slice(fr, fr + 1), slice(fc, fc + 1))[:, :, 0, 0]  # (C_out, C_in')
    u, _, vh = torch.linalg.svd(p)
    eh = _dft_matrix(grid[0], k.shape[2], torch.complex128, k.device)[fr] / math.sqrt(k.shape[2])
    ew = _dft_matrix(grid[1], k.shape[3], torch.complex128, k.device)[fc] / math.sqrt(k.shape[3])
    vectors = [torch.conj(u[:, 0]), torch.conj(vh[0]), eh, ew]
    return CircularWitness(value, (2 * math.pi * fr / grid[0], 2 * math.pi * fc / grid[1]), vectors)


def _power_steps(p: torch.Tensor, v: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` power-iteration steps on P^H P for a batch of matrices P
    (F, C_out, C_in), from the rows v (F, C_in); returns unit rows."""
    for _ in range(steps):
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-300)
        pv = torch.matmul(p, v[..., None])
        v = torch.matmul(pv.mH, p)[:, 0].conj()          # P^H P v, reading P row-major
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-300)


def fourier_witnesses(kernel: torch.Tensor, grid: IntPair, *, count: int = 2, iters: int = 20, probe: int = 3,
                      keep: int = 8) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Certified lower bounds of the circular norm, cheaply: at each
    frequency of the (gh, gw) grid (half of it: P(-w) = conj(P(w))), a short
    power iteration on the C_out x C_in matrix P(w) ends at a unit v, and
    ``||P(w) v||`` is ATTAINED by the unit vectors u = P(w)v / ||P(w)v||, v,
    whatever the number of iterations: the value never exceeds ||P(w)||.

    Each value is also ``sqrt(h w) |K(u1, u2, u3, u4)|`` at unit vectors
    (u1 = conj(u), u2 = v, u3 and u4 the Fourier vectors of w), so it is a
    lower bound of the TN bound as well: a HOPM started there can only
    climb. The exact ``circular_norm_witness`` needs an eigendecomposition
    per frequency, which for wide layers costs tens of seconds; here every
    frequency gets ``probe`` power steps and only the ``keep`` best go on to
    ``iters`` in all.

    Args:
        kernel: stride-1 (C_out, C_in, h, w) (a strided layer's
            ``reshape_strided_kernel``); computed in complex128.
        grid: the frequency grid (gh, gw).
        count: how many of the best frequencies to return.
        iters, probe, keep: power steps in all, on every frequency, and how
            many frequencies go on after the probe.

    Returns:
        values (count,), float64, descending (conv units, as the circular
        norm), and four (count, d_i) complex unit vectors attaining them.
    """
    k = kernel.detach()
    gh, gw = pair(grid)
    c_out, c_in, h, w = (int(d) for d in k.shape)
    eh = _dft_matrix(gh, h, torch.complex128, k.device)
    ew = _dft_matrix(gw, w, torch.complex128, k.device)
    # every frequency of the half grid, as one row of the 2-D DFT of the flattened taps: P = E K^T, one GEMM
    fr_all = torch.arange(gh, device=k.device).repeat_interleave(gw // 2 + 1)
    fc_all = torch.arange(gw // 2 + 1, device=k.device).repeat(gh)
    flat = k.to(torch.complex128).reshape(c_out * c_in, h * w)
    step = max(1, _EXACT_BLOCK // max(1, c_out * c_in))
    candidates = []   # (probe value, frequency row, column, v) of every frequency's probe
    for start in range(0, len(fr_all), step):
        fr, fc = fr_all[start:start + step], fc_all[start:start + step]
        e = (eh[fr][:, :, None] * ew[fc][:, None, :]).reshape(len(fr), h * w)
        p = (e @ flat.T).reshape(len(fr), c_out, c_in)
        # start from the row of largest norm: P^H e_i != 0 whenever P != 0
        top_row = (p.real ** 2 + p.imag ** 2).sum(-1).argmax(-1)
        v = _power_steps(p, p[torch.arange(p.shape[0]), top_row].conj(), max(1, min(probe, iters)))
        value = torch.linalg.vector_norm(torch.matmul(p, v[..., None])[..., 0], dim=-1)
        candidates.append((value, fr, fc, v))
    value, fr, fc, v = (torch.cat([c[i] for c in candidates]) for i in range(4))
    top = torch.argsort(value, descending=True)[: max(count, keep)]
    fr, fc, v = fr[top], fc[top], v[top]
    # the kept frequencies' matrices again (a few), for the remaining steps
    p = ((eh[fr][:, :, None] * ew[fc][:, None, :]).reshape(len(fr), h * w) @ flat.T).reshape(len(fr), c_out, c_in)
    v = _power_steps(p, v, max(0, iters - probe))
    pv = torch.matmul(p, v[..., None])[..., 0]
    norm = torch.linalg.vector_norm(pv, dim=-1)
    best = torch.argsort(norm, descending=True)[: max(1, count)]
    u = pv[best] / norm[best].clamp_min(1e-300)[:, None]
    vectors = [u.conj(), v[best], eh[fr[best]] / math.sqrt(h), ew[fc[best]] / math.sqrt(w)]
    return norm[best].to(torch.float64), vectors


# ----------------------------------------------------------------------------
# Channel-wise spectra (ConvNorm paper, Figure 2)
# ----------------------------------------------------------------------------

def cond_from_power(power: torch.Tensor) -> torch.Tensor:
    """(C_out, ...) squared channel singular values -> sqrt(max/min) per
    channel (floored at ``COND_FLOOR``; NaN for an all-zero channel)."""
    p = power.reshape(power.shape[0], -1).to(torch.float64)
    pmax = p.max(dim=1).values
    pmin = torch.maximum(p.min(dim=1).values, pmax * COND_FLOOR)
    cond = torch.sqrt(pmax / pmin)
    return torch.where(pmax > 0, cond, torch.full_like(cond, float("nan")))


def weight_channel_spectrum(weight: torch.Tensor, input_size: IntPair, stride: IntPair = 1) -> torch.Tensor:
    r"""Squared singular values of each output channel's circular operator.

    .. math::
        s_k(w)^2 = \sum_j |a_{kj}(w)|^2

    for output channel k and frequency w (FFT size = the input size; with a
    stride, the polyphase kernel K' on the (H/s, W/s) grid): the eigenvalues
    of A_k A_k^T, A_k the map from the input to channel k. Grouped weights
    need nothing special (a channel sees only its group's inputs).

    Returns:
        (C_out, H/sh, W/sw), float64.
    """
    k, grid = _strided_grid(weight, input_size, stride, 1)
    out = []
    for rows in _frequency_blocks(k.shape, grid, half=False)[0]:
        spec = _kernel_dft(k, grid, rows)
        out.append((spec.real ** 2 + spec.imag ** 2).sum(dim=1))
    return torch.cat(out, dim=1)


def weight_channel_condition(weight: torch.Tensor, input_size: IntPair, stride: IntPair = 1) -> torch.Tensor:
    """Per output channel: ``sqrt(max_w s_k(w)^2 / min_w s_k(w)^2)`` of
    ``weight_channel_spectrum`` (ConvNorm paper, Figure 2, which uses stride
    1). 1 = an isometric (tight-frame) channel.

    Example::

        >>> w = torch.zeros(1, 1, 1, 2); w[0, 0, 0] = torch.tensor([2.0, 1.0])
        >>> weight_channel_condition(w, 8)   # |2 + e^{-iw}| in [1, 3]
        tensor([3.], dtype=torch.float64)
    """
    return cond_from_power(weight_channel_spectrum(weight, input_size, stride))


def divisible(size: Sequence[int], stride: IntPair) -> bool:
    """Whether an (H, W) input is a multiple of the stride (exact spectra need it)."""
    (H, W), (sh, sw) = pair(size), pair(stride)
    return H % sh == 0 and W % sw == 0
