"""ConvNorm's fast path: the whole layer (full convolution, filter V, crop,
stride) computed in the Fourier domain, with the same result as the plain path
of ``convnorm.py`` up to rounding.

The plain path convolves at stride 1 with padding k-1 (an (H+k-1)^2 "full"
output), transforms that output, multiplies by V, transforms back, crops and
subsamples. On the (fh, fw) = (H+k-1, W+k-1) grid the full convolution is
circular, so per frequency f, with the kernel's DFT taken with its origin at
the padding offset,

    S_oj(f) = sum_u a_oj[u] exp(-i w_f . (u - padding)),
    Y_o(f)  = V_o(f) * sum_j conj(S_oj(f)) X_j(f),

where X is the transform of the input zero-padded to the grid; the output is
``ifft2(Y)`` sampled at [0, s, 2s, ...] (the padding offset holds the crop).
The convolution becomes one small complex matrix per frequency: cheaper than
the direct conv (and than its backward), and the filter costs no extra
transforms. On top of that:

* Two real images in one complex transform: z = x_a + i x_b. Every per-frequency
  matrix here is the spectrum of a real operator (M(-f) = conj(M(f))), so the
  real and imaginary parts of the result are the two filtered images; a batch
  of N costs N/2 c2c transforms (an odd batch pads one zero image).
* Strided layers: subsampling by s in space is folding the spectrum, so the
  inverse transform runs on the (fh/s, fw/s) grid when s divides the grid.
* The conjugated spectrum conj(X) comes for free from the inverse transform of
  x_a - i x_b, and with it every product below is a plain or transposed
  batched GEMM with S itself (a conjugated operand would make torch copy it).
* Transposes between the transform layout (image-major) and the GEMM layout
  (frequency-major) are 2-D transposes of 8-byte words, torch's blocked copy.
* Backward is written by hand: the adjoint of every step, and the weight
  gradient from the per-frequency gradient by the same small DFT matrix.

Transforms and products run in complex64 (complex128 for fp64 inputs), also
under autocast. The matrices are built without autograd; the autograd
Function gets the weight only to return its gradient.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Tuple

import torch

from .convnorm_ops import transpose2d


class Geometry(NamedTuple):
    fh: int            # FFT grid (the method's: H+k-1, or H for circular padding)
    fw: int
    th: int            # spectrum folds (the stride when it divides the grid, else 1)
    tw: int
    step_h: int        # subsampling left after folding (the stride when not folded)
    step_w: int
    ho: int            # output size
    wo: int


def geometry(height: int, width: int, grid: Tuple[int, int], crop: Tuple[int, int],
             stride: Tuple[int, int]) -> Geometry:
    """Where the output samples of the plain path sit on the grid: positions
    crop, crop+s, ... < grid-crop; the phase shift moves them to 0, s, ..."""
    (fh, fw), (ch, cw), (sh, sw) = grid, crop, stride
    ho, wo = len(range(0, fh - 2 * ch, sh)), len(range(0, fw - 2 * cw, sw))
    th = sh if fh % sh == 0 else 1
    tw = sw if fw % sw == 0 else 1
    return Geometry(fh, fw, th, tw, sh // th, sw // tw, ho, wo)


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


@functools.lru_cache(maxsize=128)
def _phase_matrix(kh, kw, ph, pw, fh, fw, dtype, device) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        # Frequencies as signed integers, so that the rows of f and -f are exact
        # conjugates and the spectra built from them exactly Hermitian.
        p = torch.arange(fh, dtype=torch.float64)
        p = torch.where(p > fh // 2, p - fh, p) / fh
        q = torch.arange(fw, dtype=torch.float64)
        q = torch.where(q > fw // 2, q - fw, q) / fw
        a = torch.arange(kh, dtype=torch.float64) - ph
        b = torch.arange(kw, dtype=torch.float64) - pw
        angle = -2 * math.pi * (p.view(fh, 1, 1, 1) * a.view(1, 1, kh, 1) + q.view(1, fw, 1, 1) * b.view(1, 1, 1, kw))
        return torch.polar(torch.ones_like(angle), angle).reshape(fh * fw, kh * kw).to(dtype=dtype, device=device)


def phase_matrix(kernel_size, padding, grid, dtype, device) -> torch.Tensor:
    """E: (fh*fw, kh*kw), E[f, u] = exp(-i w_f . (u - padding)), frequencies in
    natural FFT order. Cached (it depends on the geometry only)."""
    return _phase_matrix(*kernel_size, *padding, *grid, dtype, torch.device(device))


def kernel_taps(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The detached kernel as (kh*kw, C_out*C_in) in ``dtype`` (complex)."""
    return weight.detach().reshape(weight.shape[0] * weight.shape[1], -1).t().to(
        dtype, memory_format=torch.contiguous_format)


def kernel_spectrum(weight: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """S (see the module docstring) at the frequencies of ``phase``' rows:
    (rows, C_out, C_in), a direct DFT of the k x k taps (a GEMM with K = k*k;
    an FFT would transform a grid that is almost all zeros). The phases wrap
    around the grid, which aliases the taps where the kernel is larger than
    the grid."""
    return (phase @ kernel_taps(weight, phase.dtype)).view(phase.shape[0], *weight.shape[:2])


def frequency_chunks(n_freq: int, c_out: int, c_in: int, itemsize: int) -> int:
    """How many frequencies of S to hold at once: S is (frequencies x C_out x
    C_in), several times the weights and, at width 1, 40-100 MB per layer.
    Built and consumed a few MB at a time it stays in cache, where a whole
    one costs a pass through memory (and page faults) each time it is written."""
    return max(1, min(n_freq, CHUNK_BYTES // max(1, c_out * c_in * itemsize)))


#: Bytes of S per chunk (see ``frequency_chunks``).
CHUNK_BYTES = 4 << 20


def filter_from_spectrum(spectrum: torch.Tensor, grid: Tuple[int, int], eps: float) -> torch.Tensor:
    """V on the rfft2 half of the grid, (fh, fw//2+1, C_out), from S on the whole grid."""
    fh, fw = grid
    half = spectrum.view(fh, fw, *spectrum.shape[1:])[:, : fw // 2 + 1]
    # A norm reduction needs no temporary of S's size (square().sum() would).
    energy = torch.linalg.vector_norm(torch.view_as_real(half), dim=(-2, -1))
    return energy.square_().add_(eps).rsqrt_()


def filter_from_weight(weight: torch.Tensor, phase: torch.Tensor, grid: Tuple[int, int],
                       eps: float) -> torch.Tensor:
    """V on the rfft2 half of the grid, (fh, fw//2+1, C_out): the same formula
    as the plain path's, from S at those frequencies (in chunks)."""
    fh, fw = grid
    half = phase.view(fh, fw, -1)[:, : fw // 2 + 1].reshape(fh * (fw // 2 + 1), -1)
    taps = kernel_taps(weight, phase.dtype)
    c_out, c_in = weight.shape[:2]
    step = frequency_chunks(half.shape[0], c_out, c_in, phase.element_size())
    energy = torch.empty(half.shape[0], c_out, dtype=weight.dtype if weight.dtype == torch.float64
                         else torch.float32, device=weight.device)
    for start in range(0, half.shape[0], step):
        s = (half[start:start + step] @ taps).view(-1, c_out, c_in)
        # A norm reduction needs no temporary of S's size (square().sum() would).
        torch.linalg.vector_norm(torch.view_as_real(s), dim=(-2, -1), out=energy[start:start + step])
    return (energy.square_().add_(eps).rsqrt_()).view(fh, fw // 2 + 1, c_out)


@functools.lru_cache(maxsize=128)
def _mirror_index(fh: int, fw: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False):
        rows = torch.arange(fh).view(fh, 1).expand(fh, fw)
        cols = torch.arange(fw).view(1, fw).expand(fh, fw)
        mirrored = cols > fw // 2
        rows = torch.where(mirrored, (-rows) % fh, rows)
        cols = torch.where(mirrored, (-cols) % fw, cols)
        return rows.to(device), cols.to(device)


def full_grid(v_half: torch.Tensor, fw: int) -> torch.Tensor:
    """(fh, fw//2+1, ...) -> (fh*fw, ...): V on the whole grid from V(-f) = V(f)."""
    fh = v_half.shape[0]
    rows, cols = _mirror_index(fh, fw, v_half.device)
    return v_half[rows, cols].reshape(fh * fw, *v_half.shape[2:])


# ---------------------------------------------------------------- data movement
def _pack(x: torch.Tensor, grid: Tuple[int, int], step: Tuple[int, int], dtype: torch.dtype,
          conjugate: bool) -> torch.Tensor:
    """Images 0..half-1 as real parts, half..n-1 as imaginary parts (negated if
    ``conjugate``), placed at [::step] on a zero grid: (half, C, gh, gw)."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    x = x.to(real)  # bf16/fp16 activations (autocast) are transformed in fp32
    n, c, h, w = x.shape
    half, pairs = (n + 1) // 2, n // 2
    sh, sw = step
    rows, cols = slice(0, sh * h, sh), slice(0, sw * w, sw)
    if (sh, sw) == (1, 1) and pairs == half:
        # Every sample of the (h, w) corner is written below: zero only the rest.
        buf = torch.empty(half, c, *grid, dtype=dtype, device=x.device)
        buf[:, :, h:].zero_()
        buf[:, :, :h, w:].zero_()
    else:
        buf = torch.zeros(half, c, *grid, dtype=dtype, device=x.device)
    parts = torch.view_as_real(buf)
    # Real and imaginary parts written in place: no temporary for the negation.
    parts[:pairs, :, rows, cols, 0].copy_(x[:pairs])
    if conjugate:
        torch.neg(x[half:], out=parts[:pairs, :, rows, cols, 1])
    else:
        parts[:pairs, :, rows, cols, 1].copy_(x[half:])
    if pairs < half:  # odd batch: the last image has no partner
        parts[pairs:, :, rows, cols, 0].copy_(x[pairs:half])
    return buf


def _unpack(y: torch.Tensor, n: int, size: Tuple[int, int], step: Tuple[int, int], dtype: torch.dtype,
            conjugate: bool) -> torch.Tensor:
    """Inverse of ``_pack``: real and imaginary parts at [:size:step] as n images
    (the imaginary parts negated if ``conjugate``)."""
    half, c = y.shape[:2]
    (ho, wo), (sh, sw) = size, step
    rows, cols = slice(0, sh * ho, sh), slice(0, sw * wo, sw)
    out = torch.empty(n, c, ho, wo, dtype=dtype, device=y.device)
    out[:half].copy_(y.real[:, :, rows, cols])
    imag = y.imag[: n - half, :, rows, cols]
    if conjugate and imag.dtype == dtype:
        torch.neg(imag, out=out[half:])  # one pass, no temporary
    else:
        out[half:].copy_(imag.neg() if conjugate else imag)
    return out


def _fold(y: torch.Tensor, th: int, tw: int, fh: int, fw: int) -> torch.Tensor:
    """Sum the spectrum (fh*fw, ...) over its th x tw tiles -> (fh/th * fw/tw, ...):
    the spectrum of the signal subsampled by (th, tw), times th*tw. Adds of
    slices: torch's sum over these dims is ~30x slower for complex tensors."""
    bh, bw = fh // th, fw // tw
    tiles = y.view(th, bh, tw, bw * y[0].numel())
    out = tiles[0, :, 0].clone()
    for i in range(th):
        for j in range(tw):
            if i or j:
                out += tiles[i, :, j]
    return out.view(bh * bw, *y.shape[1:])


def _unfold(g: torch.Tensor, th: int, tw: int, fh: int, fw: int) -> torch.Tensor:
    """Adjoint of ``_fold``: repeat (fh/th * fw/tw, ...) over the tiles -> (fh*fw, ...)."""
    bh, bw = fh // th, fw // tw
    inner = g[0].numel()
    return g.view(1, bh, 1, bw * inner).expand(th, bh, tw, bw * inner).reshape(fh * fw, *g.shape[1:])


def _engine_needs(node) -> bool:
    """Whether this backward pass uses the gradient flowing into ``node``: not
    in ``torch.autograd.grad(loss, x)`` (an attack's input gradient), where the
    weight gradient would be computed and thrown away. True where unknown."""
    if node is None:
        return True
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):  # a private hook: keep working without it
        return True


#: Whether FourierConv rebuilds conj(X) in backward from the saved input
#: instead of saving it: ~1.3x the input's size less saved per layer, for one
#: more transform per training backward. Off: on the CPU the transform cost
#: 14-39% more per layer's training step (16-64 channels, batch 128,
#: docs/benchmarks.md "Before and after"), which the time target cannot afford.
RECOMPUTE_INPUT_SPECTRUM = False


def input_spectrum(x: torch.Tensor, geo: Geometry, dtype: torch.dtype) -> torch.Tensor:
    """conj(X) of the packed image pairs on the grid, frequency-major: (fh*fw, half, C_in)."""
    n, c_in = x.shape[:2]
    half, nf = (n + 1) // 2, geo.fh * geo.fw
    # conj(X) = unnormalised inverse transform of the conjugated packing.
    zc = torch.fft.ifft2(_pack(x, (geo.fh, geo.fw), (1, 1), dtype, conjugate=True), norm="forward")
    return transpose2d(zc, half * c_in, nf).view(nf, half, c_in)


class FourierConv(torch.autograd.Function):
    """out = the plain path's crop(stride(ifft2(V * fft2(conv_full(x, weight))))).

    Inputs: x (N, C_in, H, W); the weight (best a view of the parameter: its
    node tells backward whether the weight gradient is wanted at all); ``v`` =
    V / (th*tw) on the whole grid, (fh*fw, C_out, 1), a constant (no gradient
    reaches V); ``phase`` = E; ``geo``; the output dtype; optionally ``sv`` =
    S * V, if the caller has it. Otherwise S V is built from the weight, in
    chunks of frequencies where it is large, in forward and again in backward
    (cheaper than keeping it).
    """

    @staticmethod
    def forward(ctx, x, weight, v, phase, geo: Geometry, out_dtype, sv=None):
        n, c_in, h, w = x.shape
        c_out = weight.shape[0]
        half = (n + 1) // 2
        nf = geo.fh * geo.fw
        bh, bw = geo.fh // geo.th, geo.fw // geo.tw
        with torch.autocast(x.device.type, enabled=False):
            taps = kernel_taps(weight, phase.dtype)
            # conj(X) = unnormalised inverse transform of the conjugated packing.
            zc = input_spectrum(x, geo, phase.dtype)
            yc = torch.empty(nf, half, c_out, dtype=zc.dtype, device=zc.device)
            step = nf if sv is not None else frequency_chunks(nf, c_out, c_in, phase.element_size())
            for f in range(0, nf, step):
                if sv is None or step < nf:
                    sv = (phase[f:f + step] @ taps).view(-1, c_out, c_in).mul_(v[f:f + step])
                torch.bmm(zc[f:f + step], sv.transpose(1, 2), out=yc[f:f + step])  # conj(X) S V = conj(Y)
            # A small S V (one chunk) is kept for backward rather than built again.
            kept = sv if step >= nf else None
            if geo.th * geo.tw > 1:
                yc = _fold(yc, geo.th, geo.tw, geo.fh, geo.fw)
            yc = transpose2d(yc, bh * bw, half * c_out).view(half, c_out, bh, bw)
            # y = ifft2(Y) = conj(fft2(conj(Y)) / size): the conjugation is folded into unpacking.
            y = torch.fft.fft2(yc, norm="forward")
            out = _unpack(y, n, (geo.ho, geo.wo), (geo.step_h, geo.step_w), out_dtype, conjugate=True)
        # conj(X) is wanted by the weight gradient only. Saved, it is ~1.3x the
        # input's size per layer; rebuilt from x (which the layer before keeps
        # anyway, e.g. as its ReLU output) it costs one transform, and only in
        # backward passes that want the weight gradient (not an attack's).
        # Rebuilt by the same calls on the same input: the same values.
        saved_input = x if RECOMPUTE_INPUT_SPECTRUM else zc
        ctx.save_for_backward(saved_input, taps, v, phase, kept)
        ctx.geo, ctx.n, ctx.in_size, ctx.x_dtype = geo, n, (h, w), x.dtype
        ctx.c_in, ctx.recomputed = c_in, RECOMPUTE_INPUT_SPECTRUM
        ctx.w_shape, ctx.w_dtype, ctx.w_node = weight.shape, weight.dtype, weight.grad_fn
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        saved_input, taps, v, phase, kept = ctx.saved_tensors
        geo, n, c_in = ctx.geo, ctx.n, ctx.c_in
        nf, half = geo.fh * geo.fw, (n + 1) // 2
        c_out = ctx.w_shape[0]
        bh, bw = geo.fh // geo.th, geo.fw // geo.tw
        need_x = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1] and _engine_needs(ctx.w_node)
        grad_x = grad_w = None
        with torch.autocast(grad.device.type, enabled=False):
            # Gradient w.r.t. Y: the adjoint of ifft2 + sampling is fft2 of the
            # zero-embedded gradient / grid size (the 1/(th*tw) is in v).
            g = torch.fft.fft2(_pack(grad, (bh, bw), (geo.step_h, geo.step_w), phase.dtype, conjugate=False),
                               norm="forward")
            g = transpose2d(g, half * c_out, bh * bw).view(bh * bw, half, c_out)
            if geo.th * geo.tw > 1:
                g = _unfold(g, geo.th, geo.tw, geo.fh, geo.fw)
            grad_z = torch.empty(nf, half, c_in, dtype=g.dtype, device=g.device) if need_x else None
            zc = None
            if need_w:
                with torch.no_grad():
                    zc = input_spectrum(saved_input, geo, phase.dtype) if ctx.recomputed else saved_input
            grad_taps = torch.zeros(taps.shape[1], taps.shape[0], dtype=v.dtype, device=v.device) if need_w else None
            step = nf if kept is not None else frequency_chunks(nf, c_out, c_in, phase.element_size())
            for f in range(0, nf, step):
                rows = slice(f, f + step)
                if need_x:
                    sv = kept if kept is not None else (phase[rows] @ taps).view(-1, c_out, c_in).mul_(v[rows])
                    torch.bmm(g[rows], sv, out=grad_z[rows])  # G M^H = G S V
                if need_w:
                    # dL/dM = G^T conj(Z) per frequency for M = conj(S) V, and S = E taps:
                    # d taps = Re((dL/dM * V)^T E).
                    grad_m = torch.bmm(g[rows].transpose(1, 2), zc[rows]).mul_(v[rows])
                    grad_taps += (grad_m.view(grad_m.shape[0], -1).t() @ phase[rows]).real
            if need_w:
                grad_w = grad_taps.reshape(ctx.w_shape).to(ctx.w_dtype)
            if need_x:
                grad_z = transpose2d(grad_z, nf, half * c_in).view(half, c_in, geo.fh, geo.fw)
                grad_z = torch.fft.ifft2(grad_z, norm="forward")  # adjoint of fft2
                grad_x = _unpack(grad_z, n, ctx.in_size, (1, 1), ctx.x_dtype, conjugate=False)
        return grad_x, grad_w, None, None, None, None, None
