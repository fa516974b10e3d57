"""Progress a person can follow through hours of GPU work.

- the grid: ``[k/n] <run id>  elapsed 3m12s  eta 15m`` before each run, the
  time left estimated from the runs done so far (``eta ?`` before the first);
  given each run's planned epochs, from the epochs trained too: seconds per
  epoch times the epochs left, plus each run's time outside training (its
  evaluation) once a run has finished. Until then the estimate covers
  training only and ends in ``+`` (``eta 12m+``). Each epoch's line then
  ends with the grid's time left (``grid eta 12m+``, :func:`grid_eta_suffix`);
- an epoch: tqdm's bar on a terminal; with the output redirected (a log file,
  a SLURM job) a line every ``ROBUSTBENCH_CONVNORM_PROGRESS_SECONDS`` seconds
  (default 30) with the batches done, images per second and the epoch's time
  left. The count advances after each batch from the batch's shape, never its
  values: no host synchronisation is added to the training step.
"""
from __future__ import annotations

import math
import os
import time
import weakref
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence

from tqdm.auto import tqdm

__all__ = ["INTERVAL_ENV", "interval_seconds", "duration", "GridProgress", "track_epoch", "epoch_done",
           "grid_eta_suffix"]

#: seconds between two progress lines when the output is not a terminal
INTERVAL_ENV = "ROBUSTBENCH_CONVNORM_PROGRESS_SECONDS"
_DEFAULT_INTERVAL = 30.0


def interval_seconds() -> float:
    """The interval of progress lines: the variable's value, else 30 s."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, _DEFAULT_INTERVAL))
    except ValueError:
        return _DEFAULT_INTERVAL
    return value if value >= 0 and math.isfinite(value) else _DEFAULT_INTERVAL


def duration(seconds: Optional[float]) -> str:
    """45s, 3m12s, 15m (from 10 minutes on), 2h05m; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 3600:
        return f"{round(s / 60)}m"
    minutes = round(s / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


class GridProgress:
    """The ``[k/n]`` lines of a grid. ``ran(seconds)`` after each run that did
    work (runs skipped as finished or held elsewhere would make the estimate
    too short). Without ``epochs`` the estimate is the runs' mean duration
    times the runs left. With ``epochs`` (each run's planned epochs, in grid
    order) the training loop reports each epoch (:func:`epoch_done`) and the
    estimate is seconds per epoch times the epochs left, plus the mean time a
    finished run spent outside its epochs, times the runs left. The newest
    GridProgress is the one the epochs report to."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic,
                 epochs: Optional[Sequence[int]] = None):
        global _CURRENT
        self.total, self.clock = int(total), clock
        self.started = clock()
        self.durations: List[float] = []
        self.epochs = None if epochs is None else [int(e) for e in epochs]
        self.epoch_seconds: List[float] = []   # every epoch trained, in this grid
        self.outside: List[float] = []         # per finished run: its seconds outside its epochs
        self.k = 0                             # the run under way (1-based)
        self.run_epochs: List[float] = []      # the current run's epochs
        _CURRENT = weakref.ref(self)

    def eta(self) -> Optional[str]:
        """The grid's time left now, as text (None: no estimate yet)."""
        if self.epochs is None or not self.epoch_seconds:
            if not self.durations:
                return None
            left = self.total - max(self.k, 1) + 1  # this run and the ones after it
            return duration(sum(self.durations) / len(self.durations) * left)
        per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
        current = max(self.k, 1)
        epochs_left = max(self.epochs[current - 1] - len(self.run_epochs), 0) + sum(self.epochs[current:])
        runs_left = self.total - current + 1
        if self.outside:
            return duration(per_epoch * epochs_left + sum(self.outside) / len(self.outside) * runs_left)
        return duration(per_epoch * epochs_left) + "+"   # evaluation not timed yet

    def line(self, k: int, run_id: str) -> str:
        self.k, self.run_epochs = k, []
        elapsed = self.clock() - self.started
        return f"[{k}/{self.total}] {run_id}  elapsed {duration(elapsed)}  eta {self.eta() or '?'}"

    def epoch(self, seconds: float) -> None:
        self.epoch_seconds.append(float(seconds))
        self.run_epochs.append(float(seconds))

    def ran(self, seconds: float) -> None:
        self.durations.append(float(seconds))
        if self.run_epochs:
            self.outside.append(max(float(seconds) - sum(self.run_epochs), 0.0))
        self.run_epochs = []


_CURRENT: Optional["weakref.ReferenceType[GridProgress]"] = None


def _current() -> Optional[GridProgress]:
    return _CURRENT() if _CURRENT is not None else None


def epoch_done(seconds: float) -> None:
    """The training loop's report of one epoch to the grid under way (if any)."""
    grid = _current()
    if grid is not None:
        grid.epoch(seconds)


def grid_eta_suffix() -> str:
    """``  grid eta 12m`` for an epoch's line, '' outside a grid or before any estimate."""
    grid = _current()
    eta = grid.eta() if grid is not None and grid.epochs is not None else None
    return f"  grid eta {eta}" if eta else ""


def track_epoch(batches: Iterable, total: int, label: str, log: Callable[[str], Any], *,
                interval: Optional[float] = None, clock: Callable[[], float] = time.perf_counter) -> Iterator:
    """Yield ``batches`` ((x, y) pairs) with a bar on a terminal, else a line
    through ``log`` every ``interval`` seconds (default: interval_seconds())."""
    bar = tqdm(total=total, desc=label, leave=False, disable=None, unit="batch")
    if not bar.disable:
        try:
            for item in batches:
                yield item
                bar.update(1)
        finally:
            bar.close()
        return
    every = interval_seconds() if interval is None else interval
    started = last = clock()
    done = images = 0
    for item in batches:
        yield item
        done += 1
        images += len(item[1])
        now = clock()
        if now - last >= every and done < total:
            last = now
            spent = max(now - started, 1e-9)
            left = (total - done) * spent / done
            log(f"{label}: {done}/{total} batches, {images / spent:,.0f} images/s, eta {duration(left)}")
