"""ConvNorm (Liu et al., NeurIPS 2021): each output channel of a conv layer is
filtered so that the channel's operator becomes a tight frame.

For a kernel ``a`` of shape (C_out, C_in, kh, kw), output channel k is
multiplied in the Fourier domain by

    V_k(w) = (sum_j |a_hat_kj(w)|^2 + eps) ** -1/2

which turns the channel operator ``A_k`` into ``(A_k A_k^T)^-1/2 A_k``: on a
circular domain all its singular values are 1, with zero padding its norm is
at most 1, and the whole layer's norm is at most sqrt(C_out) (Prop. 3.1).

The forward pass follows the official implementation step by step (see
docs/normalizers.md, which also lists every difference from it):

1. stride-1 "full" convolution with padding k-1 (output H+k-1), which is a
   circular convolution of the zero-padded input, so the filter is exact; a
   conv bias is added here, inside the convolution, so the filter scales it
   by V_k(0) (``bias_placement="before_filter"``, the official code's);
2. V from the *detached* kernel, FFT size = that full output size;
3. rfft2 of the full output, multiply by V, irfft2 (always in fp32 or fp64,
   also under autocast);
4. crop k-1-padding pixels per border, then subsample [::s, ::s] for stride s;
5. the learnable depthwise "affine" conv, started at the identity
   (``affine_init="identity"``) or, as in the official code, with nn.Conv2d's
   default random initialisation (``affine_init="conv_default"``: the paper
   configs use it; it left the quickstart's ConvNet without BatchNorm at chance).

1x1 kernels have a flat spectrum: channel k is just scaled by 1/||a_k||.

In evaluation the layer uses a moving average of V kept during training
(``eval_filter="running"``), started from zero, with the cosine ramp-down
``f = max(0.5 * (1 + cos(pi * min(n, N) / N)), 0.01)`` where n counts training
forward passes including the current one (a saved buffer, so it survives
checkpoints).

Two implementations of the same layer (``fast_path``): the plain one above,
kept as the reference, and a Fourier-domain one (``convnorm_fourier.py``:
the full convolution as per-frequency channel products, two images per complex
transform, the inverse transform of strided layers on the subsampled grid).
They agree up to rounding (outputs and gradients tested within 1e-5 of the
tensor's scale in fp32 and 1e-12 in fp64; observed ~1e-6 and ~1e-15).
``FAST_PATH_DEFAULT`` says where the fast one is on by default;
``set_convnorm_fast_path(model, ...)`` overrides it per model.

V depends on the weights only, so it is computed once per weight update and
reused by every forward until then (``weight_cache.py`` says how a change is
seen, including optimizer steps that leave the version counter alone and
edits through ``.data``).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import convnorm_fourier as fourier
from .base import Normalizer
from .convnorm_ops import (SymmetricFourierFilter, autocast_dtype, circular_pad, fft_dtype, kernel_rfft2,
                           pair)
from .registry import register_normalizer
from .weight_cache import ParameterCache

__all__ = ["AFFINE_INITS", "BIAS_PLACEMENTS", "FAST_PATH_DEFAULT", "ConvNorm", "ConvNorm2d", "kernel_rfft2",
           "set_convnorm_fast_path"]

#: Smallest update weight of the running filter (the official code's floor).
MIN_RUNNING_WEIGHT = 0.01

#: How the depthwise affine conv starts: "conv_default" keeps nn.Conv2d's
#: random initialisation (weights and bias uniform in +-1/sqrt(k*k), about
#: +-0.33 for 3x3), as the official code does; "identity" starts it as a
#: centred delta with zero bias, so that the layer is plain ConvNorm at first.
AFFINE_INITS = ("conv_default", "identity")

#: Where a conv bias enters: "before_filter" adds it to the full convolution,
#: as the official code does (F.conv2d with the bias), so the filter scales it
#: by V_k(0); "after_filter" adds it to the normalized output, unscaled.
BIAS_PLACEMENTS = ("before_filter", "after_filter")

#: Whether ``ConvNorm2d`` uses the Fourier-domain fast path when its
#: ``fast_path`` is None, per device type. The rule: on by default only where
#: it was measured faster than the plain path AND matched it (tests/
#: test_norm_convnorm.py). CPU: measured (docs/normalizers.md: a ResNet-18
#: training step 1.5x (width 0.25) to 1.7x (width 1) faster than the plain
#: path, 1 thread). CUDA: never measured (no GPU when this was written), so
#: the plain path stays the default there; devices not listed, too.
FAST_PATH_DEFAULT: Dict[str, bool] = {"cpu": True, "cuda": False}


def set_convnorm_fast_path(model: nn.Module, enabled: Optional[bool]) -> int:
    """Set ``fast_path`` on every ConvNorm2d in ``model``: True (Fourier-domain
    path), False (plain path) or None (``FAST_PATH_DEFAULT`` of the input's
    device). Returns the number of layers set."""
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"convnorm: fast_path must be True, False or None, got {enabled!r}")
    layers = [m for m in model.modules() if isinstance(m, ConvNorm2d)]
    for layer in layers:
        layer.fast_path = enabled
    return len(layers)


class ConvNorm2d(nn.Module):
    """A conv layer normalized by ConvNorm; drop-in for ``nn.Conv2d``.

    Attributes used by other parts of the harness (e.g. Lipschitz bounds):
    ``weight`` (C_out, C_in, kh, kw), ``kernel_size``, ``stride``, ``padding``,
    ``affine`` (the depthwise ``nn.Conv2d`` or None), ``exact_filter(h, w)``
    and ``current_filter(h, w)``. ``clear_cache()`` drops the cached filters.
    """

    #: FFTs, complex products and the filter cache: torch.compile leaves this layer eager (speed.py).
    compile_eager = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = False, *, affine: bool = True, affine_init: str = "identity",
                 bias_placement: str = "before_filter", eval_filter: str = "running",
                 eps: float = 1e-6, ramp_steps: int = 40000, padding_mode: str = "zeros"):
        super().__init__()
        if affine_init not in AFFINE_INITS:
            raise ValueError(f"convnorm: affine_init must be one of {AFFINE_INITS}, got {affine_init!r}")
        if bias_placement not in BIAS_PLACEMENTS:
            raise ValueError(f"convnorm: bias_placement must be one of {BIAS_PLACEMENTS}, got {bias_placement!r}")
        if eval_filter not in ("running", "exact"):
            raise ValueError(f"convnorm: eval_filter must be 'running' or 'exact', got {eval_filter!r}")
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"convnorm: padding_mode must be 'zeros' or 'circular', got {padding_mode!r}")
        if eps < 0:
            raise ValueError(f"convnorm: eps must be >= 0, got {eps}")
        if int(ramp_steps) < 1:
            raise ValueError(f"convnorm: ramp_steps must be >= 1, got {ramp_steps}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = pair(kernel_size)
        self.stride = pair(stride)
        self.padding = pair(padding)
        kh, kw = self.kernel_size
        for k, p in zip(self.kernel_size, self.padding):
            if k > 1 and not 0 <= p <= k - 1:
                raise ValueError(f"convnorm: padding {p} outside [0, {k - 1}] for kernel size {k}")
        self.eval_filter = eval_filter
        self.bias_placement = bias_placement
        self.eps = float(eps)
        self.ramp_steps = int(ramp_steps)
        self.padding_mode = padding_mode

        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels, kh, kw))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None

        if affine:
            # Depthwise kernel r_k applied after normalization. Odd sizes only, so
            # that "same" padding keeps the output size (the official code's k
            # with padding (k-1)//2 changes it for even k).
            ah, aw = (kh if kh % 2 else kh - 1), (kw if kw % 2 else kw - 1)
            self.affine = nn.Conv2d(self.out_channels, self.out_channels, (ah, aw),
                                    padding=((ah - 1) // 2, (aw - 1) // 2),
                                    groups=self.out_channels, bias=True)
            if affine_init == "identity":  # drawn first either way: the same random stream follows
                with torch.no_grad():
                    self.affine.weight.zero_()
                    self.affine.weight[:, 0, (ah - 1) // 2, (aw - 1) // 2] = 1.0
                    self.affine.bias.zero_()
        else:
            self.affine = None

        # Training forward passes so far (drives the ramp-down); saved with the model.
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))
        # Moving average of V at the training FFT size; empty until the first
        # training pass. Its shape depends on the input size, see _load_from_state_dict.
        self.register_buffer("running_filter", torch.empty(0))
        #: None: FAST_PATH_DEFAULT of the input's device; True/False: force the
        #: Fourier-domain path or the plain one (see set_convnorm_fast_path).
        self.fast_path: Optional[bool] = None
        # V per (kind, grid, dtype, eps), valid while the weight is unchanged.
        self._filter_cache = ParameterCache(type(self).__name__)

    # ------------------------------------------------------------------ filters
    @property
    def is_pointwise(self) -> bool:
        return self.kernel_size == (1, 1)

    def fft_size(self, height: int, width: int) -> Tuple[int, int]:
        """Size of the FFT grid for an input of (height, width): the full
        convolution's output (H+kh-1, W+kw-1) with zero padding, the input
        size itself with circular padding."""
        if self.padding_mode == "circular":
            return height, width
        kh, kw = self.kernel_size
        return height + kh - 1, width + kw - 1

    def _grid(self, height: int, width: int) -> Tuple[int, int]:
        # A 1x1 kernel has a flat spectrum: one value per channel suffices, so
        # its filter (and running filter) is stored on a 1x1 grid.
        return (1, 1) if self.is_pointwise else self.fft_size(height, width)

    def _cached_filter(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """V for ``key``, computed once per weight update (``weight_cache.py``:
        optimizer steps, fused ones included, in-place edits, new storage and
        edits through ``.data`` all count). Computed outside inference mode (a
        later autograd forward saves V for backward). Cached tensors are
        shared: callers must not modify them in place."""
        return self._filter_cache.lookup((self.weight,), key + (self.eps,), compute)

    def clear_cache(self) -> None:
        """Drop the cached filters (the next forward recomputes them)."""
        self._filter_cache.clear()

    def _filter_at(self, fh: int, fw: int, dtype: torch.dtype) -> torch.Tensor:
        """V on an (fh, fw) FFT grid: (C_out, fh, fw // 2 + 1), no autograd.
        Cached per weight update (see ``_cached_filter``): do not modify."""
        fdtype = fft_dtype(dtype)

        def compute():
            w = self.weight.detach().to(fdtype)
            spectrum = kernel_rfft2(w, fh, fw)
            energy = (spectrum.real.square() + spectrum.imag.square()).sum(dim=1)
            return (energy + self.eps).rsqrt()

        return self._cached_filter(("rfft2", fh, fw, fdtype), compute)

    def _on_fft_grid(self, v: torch.Tensor, height: int, width: int) -> torch.Tensor:
        fh, fw = self.fft_size(height, width)
        return v.expand(self.out_channels, fh, fw // 2 + 1).clone() if self.is_pointwise else v

    def exact_filter(self, height: int, width: int) -> torch.Tensor:
        """V for an input of spatial size (height, width), from the current
        weights: shape (C_out, Fh, Fw // 2 + 1) with (Fh, Fw) =
        ``fft_size(height, width)`` (the rfft2 layout). For 1x1 kernels the
        flat values 1/||a_k|| are broadcast over that grid."""
        gh, gw = self._grid(height, width)
        # A copy: the cached V must not be modified through the result.
        return self._on_fft_grid(self._filter_at(gh, gw, self.weight.dtype), height, width).clone()

    def current_filter(self, height: int, width: int) -> torch.Tensor:
        """The filter an evaluation forward at (height, width) uses now: the
        running one where it exists at this size (and eval_filter="running"),
        else the exact one. Same layout as ``exact_filter``."""
        gh, gw = self._grid(height, width)
        if self._running_usable(gh, gw):
            return self._on_fft_grid(self.running_filter.detach().clone(), height, width)
        return self.exact_filter(height, width)

    def _running_usable(self, gh: int, gw: int) -> bool:
        return (self.eval_filter == "running" and self.running_filter.dim() == 3
                and tuple(self.running_filter.shape) == (self.out_channels, gh, gw // 2 + 1))

    def running_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The update weight f of the next training pass (a 0-d tensor):
        max(0.5 * (1 + cos(pi * min(n, N) / N)), 0.01) with n = ``num_steps`` + 1,
        the passes so far including that one (the official code increments its
        counter before using it)."""
        n = (self.num_steps + 1).to(dtype).clamp(max=self.ramp_steps)
        return (0.5 * (1.0 + torch.cos(math.pi * n / self.ramp_steps))).clamp(min=MIN_RUNNING_WEIGHT)

    def _update_running(self, v: torch.Tensor) -> None:
        with torch.no_grad():
            if self.running_filter.shape != v.shape:
                # The first pass starts the average from zero, as the official
                # buffer does (so it then holds f(1) V, f(1) = 1 - 1.5e-9 for
                # N = 40000); a new training size restarts it from V (the official
                # code cannot change size). Decided on the device: no host sync.
                start = v.detach() * (self.num_steps > 0).to(device=v.device, dtype=v.dtype)
                self.running_filter = start.to(self.num_steps.device)
            # f is computed on the device from the counter: no host sync.
            f = self.running_weight(v.dtype)
            running = self.running_filter.to(v.dtype)
            self.running_filter.copy_(f * v + (1.0 - f) * running)
            self.num_steps.add_(1)

    def _select_filter(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """The filter for this forward (grid layout), updating the running one in training."""
        gh, gw = self._grid(height, width)
        if self.training:
            v = self._filter_at(gh, gw, dtype)
            self._update_running(v)
            return v
        if self._running_usable(gh, gw):
            return self.running_filter.to(fft_dtype(dtype))
        return self._filter_at(gh, gw, dtype)

    # ------------------------------------------------------------------ forward
    def uses_fast_path(self, x: torch.Tensor) -> bool:
        """Whether a forward on ``x`` takes the Fourier-domain path."""
        enabled = self.fast_path
        if enabled is None:
            enabled = FAST_PATH_DEFAULT.get(x.device.type, False)
        return (bool(enabled) and not self.is_pointwise and x.dim() == 4 and x.shape[0] > 0
                and x.is_floating_point())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        if kh == 1 and kw == 1:
            out = self._forward_1x1(x)
        elif self.uses_fast_path(x):
            out = self._forward_fourier(x)
        else:
            out = self._forward_fft(x)
        if self.bias is not None and self.bias_placement == "after_filter":
            out = out + self.bias.to(out.dtype).view(1, -1, 1, 1)
        if self.affine is not None:
            out = self.affine(out)
        return out

    def _inner_bias(self) -> Optional[torch.Tensor]:
        """The bias the convolution itself adds (before the filter), if any."""
        return self.bias if self.bias_placement == "before_filter" else None

    def _forward_1x1(self, x: torch.Tensor) -> torch.Tensor:
        # Flat spectrum: V_k = (||a_k||^2 + eps)^-1/2 on every frequency.
        v = self._select_filter(x.shape[-2], x.shape[-1], x.dtype)
        scale = v[:, 0, 0]
        pad = self.padding if self.padding_mode == "zeros" else (0, 0)
        if self.padding_mode == "circular" and any(self.padding):
            ph, pw = self.padding
            x = circular_pad(x, ph, ph, pw, pw)
        out = F.conv2d(x, self.weight, self._inner_bias(), self.stride, pad)
        return out * scale.to(out.dtype).view(1, -1, 1, 1)

    def _forward_fft(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        ph, pw = self.padding
        if self.padding_mode == "circular":
            # Circular conv on the input grid, aligned like zero padding `padding`;
            # wrapped as often as needed (inputs smaller than the kernel).
            full = F.conv2d(circular_pad(x, ph, kh - 1 - ph, pw, kw - 1 - pw), self.weight, self._inner_bias())
        else:
            # The "full" linear convolution: a circular one on the (H+k-1) grid.
            full = F.conv2d(x, self.weight, self._inner_bias(), 1, (kh - 1, kw - 1))
        fh, fw = full.shape[-2:]
        out_dtype = full.dtype
        fdtype = fft_dtype(x.dtype)
        v = self._select_filter(x.shape[-2], x.shape[-1], x.dtype)
        with torch.autocast(full.device.type, enabled=False):
            filtered = SymmetricFourierFilter.apply(full.to(fdtype), v.to(fdtype))
        if self.padding_mode == "zeros":
            ch, cw = kh - 1 - ph, kw - 1 - pw
            filtered = filtered[..., ch:fh - ch, cw:fw - cw]
        sh, sw = self.stride
        if sh > 1 or sw > 1:
            filtered = filtered[..., ::sh, ::sw]
        return filtered.to(out_dtype)

    def _fourier_filter(self, grid: Tuple[int, int], dtype: torch.dtype,
                        compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``_select_filter`` for the fast path: V as (fh, fw // 2 + 1, C_out),
        the exact one by the fast path's direct DFT of the taps (``compute``;
        cached per weight update like ``_filter_at``, equal to it up to
        rounding), with the same running-filter update in training."""
        gh, gw = grid
        if self.training or not self._running_usable(gh, gw):
            v = self._cached_filter(("fourier", gh, gw, dtype), compute)
            if self.training:
                self._update_running(v.permute(2, 0, 1).contiguous())
            return v
        return self.running_filter.to(dtype).permute(1, 2, 0)

    def _forward_fourier(self, x: torch.Tensor) -> torch.Tensor:
        """The plain path's result computed in the Fourier domain (convnorm_fourier.py)."""
        kh, kw = self.kernel_size
        ph, pw = self.padding
        height, width = x.shape[-2:]
        grid = self.fft_size(height, width)
        crop = (0, 0) if self.padding_mode == "circular" else (kh - 1 - ph, kw - 1 - pw)
        geo = fourier.geometry(height, width, grid, crop, self.stride)
        fdtype = fft_dtype(x.dtype)
        phase = fourier.phase_matrix(self.kernel_size, self.padding, grid, fourier.complex_dtype(fdtype), x.device)
        nf = grid[0] * grid[1]
        small = fourier.frequency_chunks(nf, self.out_channels, self.in_channels, phase.element_size()) >= nf
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            if small:  # S in one piece: build it once, for V and for the products
                sv = fourier.kernel_spectrum(self.weight, phase)
                v = self._fourier_filter(grid, fdtype, lambda: fourier.filter_from_spectrum(sv, grid, self.eps))
            else:  # S in chunks, here and inside FourierConv
                sv = None
                v = self._fourier_filter(grid, fdtype,
                                         lambda: fourier.filter_from_weight(self.weight, phase, grid, self.eps))
            v_zero = v[0, 0]  # V_k at frequency 0: what a bias added before the filter is scaled by
            # The folding of strided layers adds th*tw spectra: its 1/(th*tw) rides on V.
            v = fourier.full_grid(v, grid[1]).unsqueeze(-1) / (geo.th * geo.tw)
            if sv is not None:
                sv.mul_(v)
        # Output dtype as the plain path's: the conv's (autocast's dtype under autocast).
        out_dtype = autocast_dtype(x) or x.dtype
        # A view gives the weight a node of its own, which backward can ask
        # whether the weight gradient is wanted (not for an attack's input gradient).
        weight = self.weight.view_as(self.weight) if self.weight.requires_grad else self.weight
        out = fourier.FourierConv.apply(x, weight, v, phase, geo, out_dtype, sv)
        bias = self._inner_bias()
        if bias is not None:
            # A constant added before the filter comes out scaled by V(0).
            out = out + (bias * v_zero.to(bias.dtype)).to(out.dtype).view(1, -1, 1, 1)
        return out

    # ------------------------------------------------------------- state dict
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "running_filter"
        if key in state_dict:
            saved = state_dict[key]
            if saved.shape != self.running_filter.shape:
                # The running filter's shape follows the training input size.
                self.running_filter = torch.empty(saved.shape, dtype=self.running_filter.dtype,
                                                  device=self.running_filter.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, eval_filter={self.eval_filter}, "
                f"eps={self.eps}, ramp_steps={self.ramp_steps}, padding_mode={self.padding_mode}"
                + (f", bias=True, bias_placement={self.bias_placement}" if self.bias is not None else ""))


@register_normalizer("convnorm")
class ConvNorm(Normalizer):
    """ConvNorm. Options:

    affine: the learnable depthwise conv after normalization (default True).
    affine_init: "identity" (a centred delta, zero bias: the layer starts as
        plain ConvNorm) or "conv_default" (nn.Conv2d's random initialisation,
        the official code's; the paper configs set it).
    bias_placement: "before_filter" (the official code: the filter scales a
        conv bias by V(0)) or "after_filter". Models here build bias-free convs.
    eval_filter: "running" (moving average of V, the paper's default) or
        "exact" (V from the current weights) in evaluation mode.
    eps: added to each channel's spectral energy before the inverse square
        root, so frequencies without kernel energy give a finite filter.
    ramp_steps: N of the cosine ramp-down of the running filter (40000).
    padding_mode: "zeros" (the official code) or "circular" (exact tight frames).
    "ConvNorm + BN" is this normalizer with the model's ``batchnorm: true``.
    """

    def __init__(self, *, affine: bool = True, affine_init: str = "identity",
                 bias_placement: str = "before_filter", eval_filter: str = "running", eps: float = 1e-6,
                 ramp_steps: int = 40000, padding_mode: str = "zeros"):
        # Build one throw-away layer so that bad options fail here, not inside a model.
        ConvNorm2d(1, 1, 3, padding=1, affine=False, affine_init=affine_init, bias_placement=bias_placement,
                   eval_filter=eval_filter, eps=eps, ramp_steps=ramp_steps, padding_mode=padding_mode)
        self.affine = bool(affine)
        self.affine_init = affine_init
        self.bias_placement = bias_placement
        self.eval_filter = eval_filter
        self.eps = float(eps)
        self.ramp_steps = int(ramp_steps)
        self.padding_mode = padding_mode

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return ConvNorm2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                          bias=bias, affine=self.affine, affine_init=self.affine_init,
                          bias_placement=self.bias_placement, eval_filter=self.eval_filter, eps=self.eps,
                          ramp_steps=self.ramp_steps, padding_mode=self.padding_mode)

    def describe(self) -> str:
        return (f"convnorm(affine={self.affine}, affine_init={self.affine_init}, "
                f"eval_filter={self.eval_filter}, eps={self.eps})")
