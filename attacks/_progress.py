"""Progress of an evaluator over its batches: a tqdm bar on a terminal and,
when the output is redirected (no bar), a line through the protocol's ``log``
every ``interval`` seconds with the rate and the time left. Updated once per
batch, after the batch's own results reached the host: it adds no device
synchronisation inside the attack steps."""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from robustbench_convnorm.progress import interval_seconds

try:
    from tqdm.auto import tqdm
except ImportError:          # tqdm is a declared dependency; run without a bar anyway
    tqdm = None

#: seconds between two progress lines when there is no bar; None: the run's setting,
#: $ROBUSTBENCH_CONVNORM_PROGRESS_SECONDS (default 30; robustbench_convnorm/progress.py)
INTERVAL_S: Optional[float] = None


class Progress:
    def __init__(self, total: int, label: str, log: Callable[[str], Any], *, interval: Optional[float] = None):
        self.total, self.label, self.log = int(total), label, log
        if interval is None:
            interval = INTERVAL_S if INTERVAL_S is not None else interval_seconds()
        self.interval = float(interval)
        self.done = 0
        self.started = self.last = time.perf_counter()
        # disable=None: a bar only when stderr is a terminal
        self.bar = tqdm(total=self.total, desc=label, unit="batch", leave=False, disable=None) if tqdm else None
        if self.bar is not None and self.bar.disable:
            self.bar = None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.interval and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.log(f"[eval] {self.label}: {self.done} of {self.total} batches, "
                     f"{rate:.3g} batches/s, about {_duration(left)} left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
