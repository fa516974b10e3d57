"""Progress of an evaluator over its batches: a tqdm bar on a terminal and,
when the output is redirected (no bar), a line through the protocol's ``log``
every ``interval`` seconds with the rate and the time left. Updated once per
batch, after the batch's own results reached the host: it adds no device
synchronisation inside the attack steps."""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from tqdm.auto import tqdm

from robustbench_convnorm.progress import duration, interval_seconds


class Progress:
    def __init__(self, total: int, label: str, log: Callable[[str], Any], *, interval: Optional[float] = None):
        """``interval``: seconds between two progress lines when there is no
        bar; None: the run's setting, $ROBUSTBENCH_CONVNORM_PROGRESS_SECONDS
        (default 30; robustbench_convnorm/progress.py)."""
        self.total, self.label, self.log = int(total), label, log
        self.interval = float(interval_seconds() if interval is None else interval)
        self.done = 0
        self.started = self.last = time.perf_counter()
        # disable=None: a bar only when stderr is a terminal
        self.bar = tqdm(total=self.total, desc=label, unit="batch", leave=False, disable=None)
        if self.bar.disable:
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
                     f"{rate:.3g} batches/s, about {duration(left)} left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

