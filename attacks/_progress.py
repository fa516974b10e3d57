"""Progress of an evaluator over its batches: a tqdm bar on a terminal and,
when the output is redirected (no bar), a line through the protocol's ``log``
every ``interval`` seconds with the rate and the time left. Updated once per
batch, after the batch's own results reached the host: it adds no device
synchronisation inside the attack steps.

Inside a long batch (SimBA's thousands of queries, AutoAttack's four
attacks) the attack calls :func:`tick` with a ``measure`` callable that
returns (fraction of the batch done, what is done in words): it is called
only when a line is due, so counting what is done (which may read the
device) costs nothing between lines. ``tick`` does nothing outside an
evaluator's progress (an attack called directly)."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Optional, Tuple

from tqdm.auto import tqdm

from robustbench_convnorm.progress import duration, interval_seconds

__all__ = ["Progress", "tick", "counting_forwards"]

#: the evaluator progress now running (the protocol runs one evaluator at a time)
_ACTIVE: Optional["Progress"] = None


class Progress:
    def __init__(self, total: int, label: str, log: Callable[[str], Any], *, interval: Optional[float] = None,
                 clock: Callable[[], float] = time.perf_counter):
        """``interval``: seconds between two progress lines when there is no
        bar; None: the run's setting, $ROBUSTBENCH_CONVNORM_PROGRESS_SECONDS
        (default 30; robustbench_convnorm/progress.py)."""
        self.total, self.label, self.log, self.clock = int(total), label, log, clock
        self.interval = float(interval_seconds() if interval is None else interval)
        self.done = 0
        self.started = self.last = clock()
        # disable=None: a bar only when stderr is a terminal
        self.bar = tqdm(total=self.total, desc=label, unit="batch", leave=False, disable=None)
        if self.bar.disable:
            self.bar = None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now - self.last >= self.interval and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.log(f"[eval] {self.label}: {self.done} of {self.total} batches, "
                     f"{rate:.3g} batches/s, about {duration(left)} left")

    def within(self, measure: Callable[[], Tuple[float, str]]) -> None:
        """A line from inside the current batch, when one is due: what is
        done, and the evaluator's time left from the batches done plus the
        fraction of this one."""
        now = self.clock()
        if now - self.last < self.interval:
            return
        self.last = now
        fraction, words = measure()
        fraction = min(max(float(fraction), 0.0), 1.0)
        done = (self.done + fraction) / max(self.total, 1)
        spent = now - self.started
        left = spent * (1 - done) / done if done > 0 else None
        line = f"[eval] {self.label}: batch {min(self.done + 1, self.total)} of {self.total}: {words}, " \
               f"about {duration(left)} left"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{words}, about {duration(left)} left", refresh=True)
        else:
            self.log(line)

    def close(self) -> None:
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        global _ACTIVE
        _ACTIVE = self
        return self

    def __exit__(self, *exc):
        self.close()


def tick(measure: Callable[[], Tuple[float, str]]) -> None:
    """Report progress inside a batch (see the module's doc); a no-op when no
    evaluator progress is running."""
    if _ACTIVE is not None:
        _ACTIVE.within(measure)


@contextlib.contextmanager
def counting_forwards(model, budget: int) -> Iterator[None]:
    """Count ``model``'s forward passes (an attack's queries) with a forward
    hook while the block runs and tick with their share of ``budget`` (the
    passes the attack makes at most, roughly). Without an evaluator's
    progress running, no hook is added."""
    if _ACTIVE is None or not hasattr(model, "register_forward_hook"):
        yield
        return
    count = [0]

    def measure():
        return min(count[0] / max(budget, 1), 0.99), f"{count[0]:,} of at most about {budget:,} forward passes"

    def hook(module, inputs, output):
        count[0] += 1
        tick(measure)

    handle = model.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
