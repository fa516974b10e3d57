"""Progress a person can follow through hours of GPU work.

- the grid: ``[k/n] <run id>  elapsed 3m12s  eta 15m`` before each run, the
  time left estimated from the runs done so far (``eta ?`` before the first);
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
from typing import Any, Callable, Iterable, Iterator, List, Optional

from tqdm.auto import tqdm

__all__ = ["INTERVAL_ENV", "interval_seconds", "duration", "GridProgress", "track_epoch"]

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
    too short); the estimate is their mean duration times the runs left."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic):
        self.total, self.clock = int(total), clock
        self.started = clock()
        self.durations: List[float] = []

    def line(self, k: int, run_id: str) -> str:
        elapsed = self.clock() - self.started
        left = self.total - k + 1  # this run and the ones after it
        eta = duration(sum(self.durations) / len(self.durations) * left) if self.durations else "?"
        return f"[{k}/{self.total}] {run_id}  elapsed {duration(elapsed)}  eta {eta}"

    def ran(self, seconds: float) -> None:
        self.durations.append(float(seconds))


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
