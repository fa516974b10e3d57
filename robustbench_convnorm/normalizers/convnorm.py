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
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import Normalizer
from .registry import register_normalizer

#: Smallest update weight of the running filter (the reference's floor).
MIN_RUNNING_WEIGHT = 0.01


def _pair(value) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _fft_dtype(dtype: torch.dtype) -> torch.dtype:
    """FFTs run in fp64 for fp64 tensors and in fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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

    def _filter_at(self, fh: int, fw: int, dtype: torch.dtype) -> torch.Tensor:
        """V on an (fh, fw) FFT grid: (C_out, fh, fw // 2 + 1), no autograd."""
        with torch.no_grad(), torch.autocast(self.weight.device.type, enabled=False):
            w = self.weight.detach().to(_fft_dtype(dtype))
            spectrum = kernel_rfft2(w, fh, fw)
            energy = (spectrum.real.square() + spectrum.imag.square()).sum(dim=1)
            return (energy + self.eps).rsqrt()

    def _on_fft_grid(self, v: torch.Tensor, height: int, width: int) -> torch.Tensor:
        fh, fw = self.fft_size(height, width)
        return v.expand(self.out_channels, fh, fw // 2 + 1).clone() if self.is_pointwise else v

    def exact_filter(self, height: int, width: int) -> torch.Tensor:
        """V for an input of spatial size (height, width), from the current
        weights: shape (C_out, Fh, Fw // 2 + 1) with (Fh, Fw) =
        ``fft_size(height, width)`` (the rfft2 layout). For 1x1 kernels the
        flat values 1/||a_k|| are broadcast over that grid."""
        gh, gw = self._grid(height, width)
        return self._on_fft_grid(self._filter_at(gh, gw, self.weight.dtype), height, width)

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
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        if kh == 1 and kw == 1:
            out = self._forward_1x1(x)
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
