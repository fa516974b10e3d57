"""TN-bound regularization (Grishina, Gorbunov, Rakhuba, ECCV 2024): a plain
conv whose training loss gains ``beta * sum over layers of the TN bound``
(or, with ``target``, ``beta * sum of max(0, bound - target)``).

The TN bound ``sqrt(h'*w') * ||K'||_sigma`` bounds the conv's spectral norm
for any padding and input size (``robustbench_convnorm.lipschitz.tn_bound``).
Its gradient is ``sqrt(h'w')`` times the outer product of the maximising
vectors, so each training step needs only those vectors: every conv keeps
them as buffers and refines them with ``iters`` HOPM sweeps per step, warm
started from the previous step (like spectral normalization's u). The first
call runs ``init_iters`` sweeps from several starts instead. The vectors are
buffers, so a checkpoint carries them and a resumed run goes on unchanged.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from .. import lipschitz as lip  # the package exports every name used here
from .base import Normalizer
from .registry import register_normalizer


class TNConv2d(nn.Conv2d):
    """``nn.Conv2d`` plus the state of its TN bound: R candidate sets of the
    four HOPM vectors of the stride-reshaped kernel (R = the starts of
    ``lipschitz.hopm_starts``), each refined by warm sweeps; the bound is the
    largest candidate's value. Stored as real (R, d, 2) buffers (real and
    imaginary parts), so that dtype casts of the model leave them intact and
    checkpoints carry them."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False, *,
                 restarts: int = 3):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        (sh, sw), (kh, kw) = self.stride, self.kernel_size
        self.tn_dims = (out_channels, in_channels * sh * sw, -(-kh // sh), -(-kw // sw))
        self.tn_restarts = int(restarts)
        n_start = lip.hopm_start_count(self.tn_dims, restarts=self.tn_restarts)
        for i, d in enumerate(self.tn_dims):
            self.register_buffer(f"tn_u{i + 1}", torch.zeros(n_start, int(d), 2))
        self.register_buffer("tn_values", torch.zeros(n_start))
        self.register_buffer("tn_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("tn_steps", torch.zeros((), dtype=torch.long))

    def _vectors(self) -> List[torch.Tensor]:
        return [torch.view_as_complex(getattr(self, f"tn_u{i}").float().contiguous()) for i in range(1, 5)]

    def _store(self, values: torch.Tensor, vectors) -> None:
        self.tn_values.copy_(values.to(self.tn_values))
        for i, v in enumerate(vectors, start=1):
            buf = getattr(self, f"tn_u{i}")
            buf.copy_(torch.view_as_real(v.to(torch.complex64)).to(buf.dtype))

    def _cold(self, k: torch.Tensor, iters: int):
        starts = lip.hopm_starts(k.shape, restarts=self.tn_restarts, dtype=k.dtype, device=k.device)
        return lip.hopm_batch(k, starts, n_iter=iters)

    @torch.no_grad()
    def refresh_tn(self, iters: int = 1, init_iters: int = 50, restart_every: int = 50) -> float:
        """Update the candidate vectors; returns the bound's current value.

        The first call is cold (``init_iters`` sweeps from every start); later
        calls run ``iters`` warm sweeps on every candidate, and every
        ``restart_every`` calls (0: never) a cold search too, whose results
        replace the weakest candidates: the penalty pushes the tracked maxima
        down, and another local maximum may overtake them."""
        k = lip.reshape_strided_kernel(self.weight.detach().float(), self.stride)
        if not bool(self.tn_ready):
            values, vecs = self._cold(k, init_iters)
            self.tn_ready.fill_(True)
        else:
            values, vecs = lip.hopm_batch(k, self._vectors(), n_iter=max(1, iters), tol=0.0)
            self.tn_steps += 1
            if restart_every and int(self.tn_steps) % restart_every == 0:
                cold_values, cold_vecs = self._cold(k, init_iters)
                keep = torch.argsort(torch.cat([values, cold_values]), descending=True)[: values.shape[0]]
                values = torch.cat([values, cold_values])[keep]
                vecs = [torch.cat([a, b])[keep] for a, b in zip(vecs, cold_vecs)]
        self._store(values, vecs)
        return float(values.max()) * lip.tn_scale(self.weight.shape, self.stride)

    def tn_bound(self, iters: int = 1, init_iters: int = 50, restart_every: int = 50) -> torch.Tensor:
        """The TN bound as a differentiable 0-d tensor (float32), after
        refreshing the candidates: ``sqrt(h'w') |K'(u1, u2, u3, u4)|`` at the
        best candidate (its gradient is the bound's gradient)."""
        self.refresh_tn(iters=iters, init_iters=init_iters, restart_every=restart_every)
        best = int(torch.argmax(self.tn_values))
        with torch.autocast(device_type=self.weight.device.type, enabled=False):
            return lip.tn_value(self.weight.float(), [v[best] for v in self._vectors()], self.stride)


@register_normalizer("tn")
class TNRegularized(Normalizer):
    """Options:

    - ``beta`` (1e-3): weight of the penalty in the loss.
    - ``target`` (None): when set, a hinge: only the part of each layer's
      bound above ``target`` is penalised (``max(0, bound - target)``).
    - ``iters`` (1): HOPM sweeps per training step (warm started).
    - ``init_iters`` (50), ``restarts`` (3): the cold computations (the first
      step's, and the periodic ones): HOPM sweeps, random starts (besides
      the Fourier starts).
    - ``restart_every`` (50): a cold search every this many steps (0: never).
    """

    def __init__(self, *, beta: float = 1e-3, target: Optional[float] = None, iters: int = 1,
                 init_iters: int = 50, restarts: int = 3, restart_every: int = 50):
        if beta < 0:
            raise ValueError(f"tn: beta must be >= 0, got {beta}")
        if target is not None and target < 0:
            raise ValueError(f"tn: target must be >= 0 or null, got {target}")
        if iters < 1 or init_iters < 1 or restarts < 0 or restart_every < 0:
            raise ValueError("tn: iters and init_iters must be >= 1, restarts and restart_every >= 0")
        self.beta = float(beta)
        self.target = None if target is None else float(target)
        self.iters = int(iters)
        self.init_iters = int(init_iters)
        self.restarts = int(restarts)
        self.restart_every = int(restart_every)

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return TNConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias,
                        restarts=self.restarts)

    def layer_bounds(self, model: nn.Module) -> List[torch.Tensor]:
        """The differentiable TN bound of every ``TNConv2d`` in the model."""
        return [m.tn_bound(self.iters, self.init_iters, self.restart_every)
                for m in model.modules() if isinstance(m, TNConv2d)]

    def penalty(self, model: nn.Module) -> torch.Tensor:
        bounds = self.layer_bounds(model)
        if not bounds or self.beta == 0:
            return super().penalty(model)
        b = torch.stack(bounds)
        if self.target is not None:
            b = torch.clamp(b - self.target, min=0)
        return self.beta * b.sum()

    def describe(self) -> str:
        hinge = f", target={self.target}" if self.target is not None else ""
        return f"tn(beta={self.beta}{hinge})"
