"""Sound bounds of conv layers: plain convs of any padding the harness uses,
and the normalized layers whose operator is more than their weight
(ConvNorm's Fourier filter, Cayley's orthogonal frequency matrices).

Plain ``nn.Conv2d`` (and the normalizers that only reparametrize its weight:
SN, ONI, OCNN, TN), checked first to be ``conv2d(x, weight)``
(``probes.weight_is_operator``):

* zero padding: the layer pads with zeros (an isometric embedding of the
  input into the padded grid), computes the outputs of the kernel that do
  not wrap around, and keeps every s-th: a restriction of the CIRCULAR
  convolution of the same kernel on the padded grid (rounded up to a
  multiple of the stride, still zeros). Its exact norm
  (``spectra.circular_spectral_norm``) is therefore an upper bound; so is
  F4 (Singla & Feizi 2021; exact matrix norms). The smaller of the two.
* circular padding of at most k - 1 in total: a restriction of the circular
  convolution on the input grid (exact when the output covers it).
* reflect / replicate padding: no rule (those paddings copy pixels).

ConvNorm2d: the full convolution is a circular one on the (H+k-1, W+k-1)
grid of the zero-padded input; output channel k is then multiplied in the
Fourier domain by V_k(w) (the filter an evaluation forward uses: the running
one when it exists); crop and stride keep some outputs. So the operator
before the crop has frequency matrices diag(V(w)) P(w) and its norm is
max_w ||diag(V(w)) P(w)||; the learnable depthwise affine conv after it is
bounded by the conv rule. Cayley: the operator is irfft2(Q(w) rfft2(x)) after
a space-to-depth permutation: max_w ||Q(w)|| (1 up to rounding).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn

from .._util import EvalMode, pair
from ..probes import weight_is_operator
from ..spectra import _kernel_dft, circular_spectral_norm, dilate_kernel
from ..tensor_norms import f4_bound
from .registry import Unbounded, module_bound, register_module_rule

__all__ = ["padded_circular_bound", "frequency_matrices_norm"]

#: frequency matrices per block when taking their largest singular values
_BLOCK = 4096


def frequency_matrices_norm(mats: torch.Tensor) -> float:
    """max over (..., m, n) complex matrices of the largest singular value
    (the largest eigenvalue of the smaller Gram matrix), in blocks."""
    mats = mats.reshape(-1, *mats.shape[-2:])
    best = 0.0
    for start in range(0, mats.shape[0], _BLOCK):
        p = mats[start:start + _BLOCK].to(torch.complex128)
        g = p @ p.mH if p.shape[-2] <= p.shape[-1] else p.mH @ p
        best = max(best, float(torch.linalg.eigvalsh(g.contiguous())[..., -1].max()))
    return math.sqrt(max(best, 0.0))


def padded_circular_bound(weight: torch.Tensor, input_hw: Tuple[int, int], padding4: Tuple[int, int, int, int],
                          stride=1, groups: int = 1) -> float:
    """A sound bound of the zero-padded conv: the exact norm of the circular
    conv on the padded grid (rounded up to the stride), or F4 if smaller.
    ``padding4``: (left, right, top, bottom) as torch's
    ``_reversed_padding_repeated_twice``."""
    (H, W), (sh, sw) = input_hw, pair(stride)
    left, right, top, bottom = padding4
    kh, kw = weight.shape[-2:]
    gh = max(H + top + bottom, kh)
    gw = max(W + left + right, kw)
    gh, gw = -(-gh // sh) * sh, -(-gw // sw) * sw
    circ = circular_spectral_norm(weight, (gh, gw), (sh, sw), groups)
    if groups == 1:
        circ = min(circ, f4_bound(weight, (sh, sw)))
    return float(circ)


def _padding4(module: nn.Module) -> Tuple[int, int, int, int]:
    rpad = getattr(module, "_reversed_padding_repeated_twice", None)
    if rpad is not None and len(rpad) == 4:
        return tuple(int(p) for p in rpad)  # type: ignore[return-value]
    ph, pw = pair(getattr(module, "padding", 0))
    return (pw, pw, ph, ph)


@register_module_rule(nn.Conv2d, checks_operator=True)
def conv2d(module: nn.Conv2d, shape) -> float:
    """Plain or reparametrized conv: see the module docstring."""
    if len(shape) != 3:
        raise Unbounded(f"a 2-D conv on an input of shape {list(shape)}")
    if not weight_is_operator(module, shape):
        raise Unbounded(f"{type(module).__name__} is not conv2d(x, weight) (its forward does more); give it a "
                        f"lipschitz_bound() method or a rule of its own")
    with EvalMode(module), torch.no_grad():
        weight = module.weight.detach()
    kernel = dilate_kernel(weight, module.dilation).to(torch.float64)
    groups, (H, W) = int(module.groups), (int(shape[1]), int(shape[2]))
    mode = module.padding_mode
    pad4 = _padding4(module)
    if mode == "zeros":
        return padded_circular_bound(kernel, (H, W), pad4, module.stride, groups)
    if mode == "circular":
        kh, kw = kernel.shape[-2:]
        if pad4[0] + pad4[1] > kw - 1 or pad4[2] + pad4[3] > kh - 1:
            raise Unbounded("circular padding wider than the kernel's reach repeats inputs")
        sh, sw = pair(module.stride)
        stride = (sh, sw) if H % sh == 0 and W % sw == 0 else (1, 1)
        return float(circular_spectral_norm(kernel, (H, W), stride, groups))
    raise Unbounded(f"padding_mode={mode!r} copies pixels; no rule")


def _convnorm_type():
    from ...normalizers.convnorm import ConvNorm2d
    return ConvNorm2d


def _cayley_type():
    from ...normalizers.cayley import CayleyConv2d
    return CayleyConv2d


@register_module_rule(_convnorm_type())
def convnorm(module: nn.Module, shape) -> float:
    """max_w ||diag(V(w)) P(w)|| on ConvNorm's FFT grid, times the affine's bound."""
    if len(shape) != 3:
        raise Unbounded(f"ConvNorm2d on an input of shape {list(shape)}")
    _, H, W = (int(s) for s in shape)
    with EvalMode(module), torch.no_grad():
        v = module.current_filter(H, W).to(torch.float64)          # (C_out, fh, fw//2+1)
        weight = module.weight.detach().to(torch.float64)
        if module.is_pointwise:
            mats = (v[:, 0, 0, None] * weight[:, :, 0, 0])[None]
        else:
            fh, fw = module.fft_size(H, W)
            p = _kernel_dft(weight, (fh, fw), cols=slice(0, fw // 2 + 1))  # (C_out, C_in, fh, fw//2+1)
            # a real kernel and an even filter: the other half of the frequencies are conjugates
            mats = (v[:, None] * p).permute(2, 3, 0, 1)
        core = frequency_matrices_norm(mats)
        if module.affine is None:
            return core
        out_shape = (module.out_channels,) + tuple(
            int(t) for t in module(torch.zeros((1,) + tuple(shape), dtype=module.weight.dtype,
                                               device=module.weight.device)).shape[-2:])
    affine, _ = module_bound(module.affine, out_shape)
    return core * affine


@register_module_rule(_cayley_type())
def cayley(module: nn.Module, shape) -> float:
    """max_w ||Q(w)|| of the matrices the forward uses (same size and dtype)."""
    if len(shape) != 3:
        raise Unbounded(f"CayleyConv2d on an input of shape {list(shape)}")
    s = module.stride[0]
    h, w = int(shape[1]) // s, int(shape[2]) // s
    if module.kernel_size == (1, 1):  # one Q at every frequency: the forward computes it once too
        h = w = 1
    with EvalMode(module), torch.no_grad():
        dtype = torch.float64 if module.weight.dtype == torch.float64 else torch.float32
        q = module.orthogonal_matrices(h, w, dtype)
    return frequency_matrices_norm(q)

