"""Values derived from a layer's parameters (ConvNorm's filter V, Cayley's Q),
computed once and reused until the parameters change.

A parameter can change in four ways; each is seen by something that costs no
host synchronisation, except the last on an accelerator:

- an optimizer step: a ``torch.optim`` step hook counts steps globally (the
  fused SGD and Adam kernels update parameters without bumping their version
  counters, on the CPU at least);
- an in-place edit of the parameter itself (``load_state_dict``, ``p.mul_()``
  under ``torch.no_grad()``): its version counter;
- new storage (``.to()``, ``p.data = other``): its data pointer;
- an in-place edit through ``p.data`` (which has a version counter of its
  own): a comparison with a snapshot of the parameters taken when the cached
  values were computed. Where the host reads tensors directly (the CPU) the
  comparison runs before every reuse and a mismatch recomputes: exact, for one
  pass over the weights. On an accelerator reading its result would wait for
  the device at every forward of every layer, so there it runs on the device
  and is read lazily: a value reused after such an edit is multiplied by NaN
  (a stale value never passes as a plausible number), and the next lookup
  whose device copy of the check has arrived raises ``StaleCacheError``.
"""
from __future__ import annotations

from typing import Callable, Dict, Hashable, Optional, Sequence, Tuple

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_optimizer_steps = 0


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def optimizer_steps() -> int:
    """Number of ``torch.optim`` optimizer steps taken in this process so far."""
    return _optimizer_steps


#: Device types whose tensors the host reads without waiting for the device:
#: there a reuse is checked against the snapshot exactly, before it is served.
HOST_CHECKED_DEVICES = {"cpu"}


class StaleCacheError(RuntimeError):
    """A cached value was reused after its parameters changed without any sign
    the cache could see cheaply (an in-place edit through ``.data`` on an
    accelerator)."""


class ParameterCache:
    """Values computed from ``params`` by ``compute()``, one per ``key``, kept
    while the parameters stay the same (see the module docstring). Cached
    tensors are shared: callers must not modify them in place."""

    def __init__(self, owner: str):
        self.owner = owner
        self._report: Optional[Tuple[torch.Tensor, object]] = None
        self.clear()

    def clear(self) -> None:
        """Forget every value (the next lookup recomputes)."""
        self._stamp: Optional[tuple] = None
        self._snapshot: Tuple[torch.Tensor, ...] = ()
        self._values: Dict[Hashable, torch.Tensor] = {}
        self._stale: Optional[torch.Tensor] = None  # device bool: params differ from the snapshot

    def __len__(self) -> int:
        return len(self._values)

    # A copied or pickled layer starts with an empty cache: its parameters are
    # new tensors anyway, and a device event cannot be copied.
    def __deepcopy__(self, memo) -> "ParameterCache":
        return ParameterCache(self.owner)

    def __reduce__(self):
        return ParameterCache, (self.owner,)

    def lookup(self, params: Sequence[torch.Tensor], key: Hashable,
               compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The value for ``key``, computed by ``compute()`` (without autograd,
        outside inference mode and autocast) unless a valid one is cached."""
        self._raise_if_reported()
        stamp = (_optimizer_steps,) + tuple((p.data_ptr(), p._version, p.dtype, p.device, p.shape)
                                            for p in params)
        host_checked = params[0].device.type in HOST_CHECKED_DEVICES
        if stamp != self._stamp or (host_checked and not self._matches_snapshot(params)):
            self._restart(stamp, params)
        elif not host_checked and self._values:
            self._watch(params)
        value = self._values.get(key)
        if value is None:
            with torch.inference_mode(False), torch.no_grad(), \
                    torch.autocast(params[0].device.type, enabled=False):
                value = compute()
            self._values[key] = value
            return value
        if self._stale is None:
            return value
        real = value.real.dtype if value.is_complex() else value.dtype
        nan = torch.tensor(float("nan"), dtype=real, device=value.device)
        return value * torch.where(self._stale, nan, torch.ones((), dtype=real, device=value.device))

    # -------------------------------------------------------------- internals
    def _matches_snapshot(self, params) -> bool:
        return all(torch.equal(p, s) for p, s in zip(params, self._snapshot))

    def _restart(self, stamp: tuple, params) -> None:
        # A pending device report survives: it is about values served earlier.
        self.clear()
        with torch.inference_mode(False), torch.no_grad():
            self._snapshot = tuple(p.detach().clone() for p in params)
        self._stamp = stamp

    def _watch(self, params) -> None:
        """Compare the parameters with the snapshot on the device (no sync)."""
        with torch.inference_mode(False), torch.no_grad():
            changed = torch.stack([(p != s).any() for p, s in zip(params, self._snapshot)]).any()
            self._stale = changed if self._stale is None else self._stale | changed
            if self._report is None:  # one copy in flight at a time; the flag accumulates
                if self._stale.device.type == "cuda":
                    host = self._stale.to("cpu", non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                else:
                    host, event = self._stale.to("cpu"), None
                self._report = (host, event)

    def _raise_if_reported(self) -> None:
        if self._report is None:
            return
        host, event = self._report
        if event is not None and not event.query():
            return  # not arrived yet: look again at the next lookup
        self._report = None
        if bool(host):
            self.clear()
            raise StaleCacheError(
                f"{self.owner}: its parameters were edited in place through `.data` after a value "
                f"derived from them was cached (such edits leave no trace the cache can read without "
                f"waiting for the device); the forwards since then returned NaN. Edit parameters "
                f"under `torch.no_grad()` without `.data` (e.g. `p.copy_(new)`), or call "
                f"clear_cache() on the layer after editing.")
