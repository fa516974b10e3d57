"""ConvNorm (Liu et al., NeurIPS 2021): each output channel of a conv layer is
filtered so that the channel's operator becomes a tight frame.

For a kernel ``a`` of shape (C_out, C_in, kh, kw), output channel k is
multiplied in the Fourier domain by

    V_k(w) = (sum_j |a_hat_kj(w)|^2 + eps) ** -1/2

which turns the channel operator ``A_k`` into ``(A_k A_k^T)^-1/2 A_k``: on a
circular domain all its singular values are 1, with zero padding its norm is
at most 1, and the whole layer's norm is at most sqrt(C_out) (Prop. 3.1).

The forward pass follows the reference implementation step by step (see
REFERENCE.md section 1 and docs/normalizers.md):

1. stride-1 "full" convolution with padding k-1 (output H+k-1), which is a
   circular convolution of the zero-padded input, so the filter is exact;
2. V from the *detached* kernel, FFT size = that full output size;
3. rfft2 of the full output, multiply by V, irfft2 (always in fp32 or fp64,
   also under autocast);
4. crop k-1-padding pixels per border, then subsample [::s, ::s] for stride s;
5. optional bias, then the learnable depthwise "affine" conv.

1x1 kernels have a flat spectrum: channel k is just scaled by 1/||a_k||.

In evaluation the layer uses a moving average of V kept during training
(``eval_filter="running"``) with the cosine ramp-down
``f = max(0.5 * (1 + cos(pi * min(n, N) / N)), 0.01)``, where n counts
training forward passes (a saved buffer, so it survives checkpoints).

Two implementations of the same layer (``fast_path``): the plain one above,
kept as the reference, and a Fourier-domain one (``convnorm_fourier.py``:
the full convolution as per-frequency channel products, two images per complex
transform, the inverse transform of strided layers on the subsampled grid).
They agree up to rounding (outputs and gradients tested within 1e-5 of the
tensor's scale in fp32 and 1e-12 in fp64; observed ~1e-6 and ~1e-15). ``FAST_PATH_DEFAULT`` says where the fast one is on by
default; ``set_convnorm_fast_path(model, ...)`` overrides it per model.

V depends on the weights only, so it is computed once per weight update and
reused by every forward until then (key: the weight's storage and version
counter, which optimizer steps and ``load_state_dict`` bump).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import convnorm_fourier as fourier
from .base import Normalizer
from .registry import register_normalizer

#: Smallest update weight of the running filter (the reference's floor).
MIN_RUNNING_WEIGHT = 0.01

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


def _pair(value) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _fft_dtype(dtype: torch.dtype) -> torch.dtype:
    """FFTs run in fp64 for fp64 tensors and in fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autocast_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype autocast gives F.conv2d(x, ...), or None where it leaves x alone."""
    device = x.device.type
    try:
        enabled = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device)
    except TypeError:  # torch < 2.4
        enabled = torch.is_autocast_cpu_enabled() if device == "cpu" else torch.is_autocast_enabled()
        dtype = torch.get_autocast_cpu_dtype() if device == "cpu" else torch.get_autocast_gpu_dtype()
    return dtype if enabled and x.dtype in (torch.float32, torch.float16, torch.bfloat16) else None


def _fold(weight: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Sum the taps of ``weight`` along ``dim`` modulo ``size`` (circular aliasing)."""
    k = weight.shape[dim]
    if k <= size:
        return weight
    pad = (-k) % size
    if pad:
        widths = [0, 0] * (weight.dim() - 1 - (dim % weight.dim())) + [0, pad]
        weight = F.pad(weight, widths)
    shape = list(weight.shape)
    d = dim % weight.dim()
    shape[d:d + 1] = [shape[d] // size, size]
    return weight.reshape(shape).sum(dim=d)


def kernel_rfft2(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """rfft2 of ``weight`` (..., kh, kw) as the kernel of a circular convolution
    on a (height, width) grid: zero-padded bottom/right, or, where the kernel
    is larger than the grid, with its taps folded (aliased) modulo the grid."""
    weight = _fold(_fold(weight, height, -2), width, -1)
    return torch.fft.rfft2(weight, s=(height, width))


def _filter(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Circular filtering of y (..., fh, fw) by the real filter v (rfft2 layout)."""
    fh, fw = y.shape[-2:]
    return torch.fft.irfft2(torch.fft.rfft2(y, s=(fh, fw)) * v, s=(fh, fw))


class _SymmetricFourierFilter(torch.autograd.Function):
    """``_filter`` with a hand-written backward. V is real and even
    (V(-w) = V(w): it depends on |a_hat(w)| only), so the circulant operator
    is symmetric and its adjoint is the same filtering: backward filters the
    incoming gradient by V. Nothing but V is saved, where autograd through
    rfft2 would keep the whole full-size conv output alive until backward."""

    @staticmethod
    def forward(ctx, y, v):
        ctx.save_for_backward(v)
        return _filter(y, v)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return _filter(grad, v), None


class ConvNorm2d(nn.Module):
    """A conv layer normalized by ConvNorm; drop-in for ``nn.Conv2d``.

    Attributes used by other parts of the harness (e.g. Lipschitz bounds):
    ``weight`` (C_out, C_in, kh, kw), ``kernel_size``, ``stride``, ``padding``,
    ``affine`` (the depthwise ``nn.Conv2d`` or None), ``exact_filter(h, w)``
    and ``current_filter(h, w)``.
    """

    #: FFTs, complex products and the filter cache: torch.compile leaves this layer eager (speed.py).
    compile_eager = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = False, *, affine: bool = True, eval_filter: str = "running",
                 eps: float = 1e-6, ramp_steps: int = 40000, padding_mode: str = "zeros"):
        super().__init__()
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
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        kh, kw = self.kernel_size
        for k, p in zip(self.kernel_size, self.padding):
            if k > 1 and not 0 <= p <= k - 1:
                raise ValueError(f"convnorm: padding {p} outside [0, {k - 1}] for kernel size {k}")
        self.eval_filter = eval_filter
        self.eps = float(eps)
        self.ramp_steps = int(ramp_steps)
        self.padding_mode = padding_mode

        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels, kh, kw))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None

        if affine:
            # Depthwise kernel r_k applied after normalization, initialised to the
            # identity (a centred delta, zero bias) so that at initialisation the
            # layer is pure ConvNorm. Odd sizes only, so that "same" padding is exact.
            ah, aw = (kh if kh % 2 else kh - 1), (kw if kw % 2 else kw - 1)
            self.affine = nn.Conv2d(self.out_channels, self.out_channels, (ah, aw),
                                    padding=((ah - 1) // 2, (aw - 1) // 2),
                                    groups=self.out_channels, bias=True)
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
        # V per (kind, grid, dtype, ...), each with the weight key it was computed for.
        self._filter_cache: Dict[tuple, Tuple[tuple, torch.Tensor]] = {}

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
        """V for ``key``, computed once per weight update. The optimizer's in-place
        step, ``load_state_dict`` and any in-place edit bump the weight's version
        counter; ``.to()``/``.double()`` give new storage. Cached tensors are
        shared: callers must not modify them in place."""
        weight = self.weight
        stamp = (weight.data_ptr(), weight._version, weight.dtype, weight.device, self.eps)
        hit = self._filter_cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        # Never an inference tensor in the cache: a later autograd forward saves V for backward.
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
            value = compute()
        self._filter_cache[key] = (stamp, value)
        return value

    def _filter_at(self, fh: int, fw: int, dtype: torch.dtype) -> torch.Tensor:
        """V on an (fh, fw) FFT grid: (C_out, fh, fw // 2 + 1), no autograd.
        Cached per weight update (see ``_cached_filter``): do not modify."""
        fdtype = _fft_dtype(dtype)

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
        max(0.5 * (1 + cos(pi * min(n, N) / N)), 0.01) with n = ``num_steps``."""
        n = self.num_steps.to(dtype).clamp(max=self.ramp_steps)
        return (0.5 * (1.0 + torch.cos(math.pi * n / self.ramp_steps))).clamp(min=MIN_RUNNING_WEIGHT)

    def _update_running(self, v: torch.Tensor) -> None:
        with torch.no_grad():
            if self.running_filter.shape != v.shape:
                # First pass, or the training size changed: the average restarts here.
                self.running_filter = v.detach().to(self.num_steps.device).clone()
            else:
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
            return self.running_filter.to(_fft_dtype(dtype))
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
        if self.bias is not None:
            out = out + self.bias.to(out.dtype).view(1, -1, 1, 1)
        if self.affine is not None:
            out = self.affine(out)
        return out

    def _forward_1x1(self, x: torch.Tensor) -> torch.Tensor:
        # Flat spectrum: V_k = (||a_k||^2 + eps)^-1/2 on every frequency.
        v = self._select_filter(x.shape[-2], x.shape[-1], x.dtype)
        scale = v[:, 0, 0]
        pad = self.padding if self.padding_mode == "zeros" else (0, 0)
        if self.padding_mode == "circular" and any(self.padding):
            ph, pw = self.padding
            x = F.pad(x, (pw, pw, ph, ph), mode="circular")
        out = F.conv2d(x, self.weight, None, self.stride, pad)
        return out * scale.to(out.dtype).view(1, -1, 1, 1)

    def _forward_fft(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        ph, pw = self.padding
        if self.padding_mode == "circular":
            # Circular conv on the input grid, aligned like zero padding `padding`.
            full = F.conv2d(F.pad(x, (pw, kw - 1 - pw, ph, kh - 1 - ph), mode="circular"), self.weight)
        else:
            # The "full" linear convolution: a circular one on the (H+k-1) grid.
            full = F.conv2d(x, self.weight, None, 1, (kh - 1, kw - 1))
        fh, fw = full.shape[-2:]
        out_dtype = full.dtype
        fdtype = _fft_dtype(x.dtype)
        v = self._select_filter(x.shape[-2], x.shape[-1], x.dtype)
        with torch.autocast(full.device.type, enabled=False):
            filtered = _SymmetricFourierFilter.apply(full.to(fdtype), v.to(fdtype))
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
        fdtype = _fft_dtype(x.dtype)
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
            # The folding of strided layers adds th*tw spectra: its 1/(th*tw) rides on V.
            v = fourier.full_grid(v, grid[1]).unsqueeze(-1) / (geo.th * geo.tw)
            if sv is not None:
                sv.mul_(v)
        # Output dtype as the plain path's: the conv's (autocast's dtype under autocast).
        out_dtype = _autocast_dtype(x) or x.dtype
        # A view gives the weight a node of its own, which backward can ask
        # whether the weight gradient is wanted (not for an attack's input gradient).
        weight = self.weight.view_as(self.weight) if self.weight.requires_grad else self.weight
        return fourier.FourierConv.apply(x, weight, v, phase, geo, out_dtype, sv)

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
                + (", bias=True" if self.bias is not None else ""))


@register_normalizer("convnorm")
class ConvNorm(Normalizer):
    """ConvNorm. Options:

    affine: the learnable depthwise conv after normalization (default True).
    eval_filter: "running" (moving average of V, the paper's default) or
        "exact" (V from the current weights) in evaluation mode.
    eps: added to each channel's spectral energy before the inverse square
        root, so frequencies without kernel energy give a finite filter.
    ramp_steps: N of the cosine ramp-down of the running filter (40000).
    padding_mode: "zeros" (the reference) or "circular" (exact tight frames).
    "ConvNorm + BN" is this normalizer with the model's ``batchnorm: true``.
    """

    def __init__(self, *, affine: bool = True, eval_filter: str = "running", eps: float = 1e-6,
                 ramp_steps: int = 40000, padding_mode: str = "zeros"):
        # Build one throw-away layer so that bad options fail here, not inside a model.
        ConvNorm2d(1, 1, 3, padding=1, affine=False, eval_filter=eval_filter, eps=eps,
                   ramp_steps=ramp_steps, padding_mode=padding_mode)
        self.affine = bool(affine)
        self.eval_filter = eval_filter
        self.eps = float(eps)
        self.ramp_steps = int(ramp_steps)
        self.padding_mode = padding_mode

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return ConvNorm2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                          bias=bias, affine=self.affine, eval_filter=self.eval_filter, eps=self.eps,
                          ramp_steps=self.ramp_steps, padding_mode=self.padding_mode)

    def describe(self) -> str:
        return f"convnorm(affine={self.affine}, eval_filter={self.eval_filter}, eps={self.eps})"
