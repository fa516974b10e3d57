"""The actual layer module as a linear operator: its spectral norm by power
iteration and its channel spectra by impulse probes, for any padding,
stride or normalizer (ConvNorm's filter, Cayley's Q, ...)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._util import EvalMode, device_dtype, pair
from .spectra import cond_from_power

__all__ = ["layer_channel_condition", "layer_channel_spectrum", "layer_spectral_norm", "weight_is_operator"]

#: Input elements per batch of impulse probes (bounds the probing memory).
_PROBE_BLOCK = 1 << 24


def layer_spectral_norm(layer: nn.Module, input_shape: Sequence[int], *, n_iter: int = 100, tol: float = 1e-6,
                        generator: Optional[torch.Generator] = None) -> float:
    r"""Largest singular value of the layer's linear part on one input,

    .. math::
        \sigma = \max_{\|x\| = 1} \|L(x)\|, \quad L(x) = \mathrm{layer}(x) - \mathrm{layer}(0)

    (a bias or an affine bias drops out), by power iteration on L^T L with
    L^T from autograd (one forward and one vector-Jacobian product per
    step). The layer runs in eval mode (frozen statistics, cached weights;
    every submodule's flag is restored, no state changes). The estimate
    rises towards the norm and is never above it.

    Args:
        layer: any module, linear up to a constant (a conv of any kind).
        input_shape: one input's shape without the batch, e.g. (C, H, W).
        n_iter: most steps.
        tol: stop when the estimate moves by less than this (relative).
        generator: for the random start.

    Example::

        >>> conv = nn.Conv2d(3, 4, 3, padding=1)
        >>> layer_spectral_norm(conv, (3, 16, 16)) <= tn_bound(conv.weight)
        True
    """
    device, dtype = device_dtype(layer)
    shape = (1,) + tuple(int(s) for s in input_shape)
    with EvalMode(layer):
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
    """True when ``conv2d(pad(x), layer.weight, stride, padding, dilation,
    groups)`` reproduces the layer's linear map on a random input (pad: the
    layer's ``padding_mode``). False for layers that are more than their
    ``weight`` (ConvNorm's filter, Cayley's Q, ...) and for modules that are
    not 2-D convs."""
    with EvalMode(layer), torch.no_grad():  # a parametrized weight read in training mode updates its buffers
        weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        return False
    device, dtype = device_dtype(layer)
    shape = (2,) + tuple(int(s) for s in input_shape)
    try:
        with EvalMode(layer), torch.no_grad():
            x = torch.randn(shape, device=device, dtype=dtype)
            y = layer(x) - layer(torch.zeros_like(x))
            stride = pair(getattr(layer, "stride", 1))
            padding = getattr(layer, "padding", 0)
            mode = getattr(layer, "padding_mode", "zeros")
            if isinstance(padding, str) or mode != "zeros":
                rpad = getattr(layer, "_reversed_padding_repeated_twice", None)
                if rpad is None:
                    return False
                x = F.pad(x, rpad, mode=mode if mode != "zeros" else "constant")
                padding = 0
            z = F.conv2d(x, weight, None, stride, padding, getattr(layer, "dilation", 1), getattr(layer, "groups", 1))
    except Exception:  # noqa: BLE001 - any mismatch means "not a plain conv"
        return False
    if z.shape != y.shape:
        return False
    return bool(torch.linalg.vector_norm(z - y) <= rtol * max(float(torch.linalg.vector_norm(y)), 1e-30))


def layer_channel_spectrum(layer: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """``spectra.weight_channel_spectrum`` of the actual layer: for each
    output channel k, the eigenvalues of A_k A_k^T (A_k = the map from the
    input to output channel k).

    A_k^T applied to an impulse at the centre of the output gives the
    channel's (effective) kernels; split into the stride's polyphase parts
    and Fourier transformed on the (H/s, W/s) grid, their summed squared
    magnitudes are those eigenvalues. Exact for circular layers; for
    zero-padded ones exact as long as the kernel fits inside the input
    (plain convs), and the interior behaviour for filters with a wide
    support (ConvNorm). One vector-Jacobian product per chunk of channels;
    eval mode.

    Returns:
        (C_out, H/sh, W/sw), float64.
    """
    device, dtype = device_dtype(layer)
    C, H, W = (int(s) for s in input_shape)
    with EvalMode(layer):
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
    """Per output channel condition number of the actual layer operator
    (``sqrt(max/min)`` of ``layer_channel_spectrum``; 1 = a tight frame).

    Example::

        >>> layer_channel_condition(nn.Conv2d(3, 4, 1), (3, 8, 8))   # 1x1: flat spectra
        tensor([1., 1., 1., 1.], dtype=torch.float64)
    """
    return cond_from_power(layer_channel_spectrum(layer, input_shape))
