"""Training budgets: a run given wall-clock time or optimizer steps instead of
epochs (``train.budget``), for comparisons at equal compute.

The number of epochs a budget buys is fixed once, before the first epoch, so
the learning-rate schedule knows its length and a resumed run trains exactly
what an uninterrupted one does: a step budget divides by the optimizer steps of
one epoch; a time budget measures the run's own throughput on a short warm-up
(on a copy of the model, so the run itself is untouched) and divides. The plan
is stored in the checkpoint and never re-measured on resume; the record keeps
the budget, the estimate, what was used, and the ``--set`` lines that replay
the run on any machine with its fixed epoch count.
"""
from __future__ import annotations

import os

import re
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TIME = re.compile(r"^\s*((\d+(\.\d+)?)\s*([smhd])\s*)+$")
_TIME_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_STEPS = re.compile(r"^\s*(\d+)\s*steps?\s*$")


class BudgetError(ValueError):
    """A budget that cannot be read, or that buys less than one epoch."""


@dataclass(frozen=True)
class Budget:
    kind: str       # "time" | "steps"
    amount: float   # seconds, or optimizer steps
    text: str       # as written in the config


def parse_budget(text) -> Budget:
    """``'30m'``, ``'2h'``, ``'1h30m'``, ``'90s'`` (wall-clock time) or
    ``'5000 steps'`` (optimizer steps)."""
    if not isinstance(text, str):
        raise BudgetError(f"{text!r} is not a budget; write a time such as '30m', '2h', '1h30m', '90s', "
                          f"or optimizer steps such as '5000 steps'")
    steps = _STEPS.match(text)
    if steps:
        amount = int(steps.group(1))
        kind = "steps"
    elif _TIME.match(text):
        amount = sum(float(n) * _UNITS[u] for n, u in _TIME_PART.findall(text))
        kind = "time"
    else:
        raise BudgetError(f"{text!r} is not a budget; write a time such as '30m', '2h', '1h30m', '90s', "
                          f"or optimizer steps such as '5000 steps'")
    if amount <= 0:
        raise BudgetError(f"{text!r} is no budget at all; give a positive time or number of steps")
    return Budget(kind, float(amount), text.strip())


@dataclass
class Plan:
    """What a budget bought, fixed before the first epoch (stored in the checkpoint)."""
    budget: str
    kind: str
    epochs: int
    steps_per_epoch: int
    estimated_epoch_seconds: Optional[float] = None  # time budgets: the warm-up's estimate
    warmup_batches: int = 0
    # time budgets: the 1-minute load average when the warm-up ended; a busy
    # machine misjudges throughput (docs/equal_compute.md), and this says so
    load_average: Optional[float] = None

    def as_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "Plan":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def replay_sets(self) -> str:
        """The ``--set`` lines that train the same run with its epoch count fixed
        (a run of its own: the run id hashes the budget, not the epochs)."""
        return f"--set train.budget=null --set train.epochs={self.epochs}"


def plan_epochs(budget: Budget, steps_per_epoch: int, epoch_seconds: Callable[[], float],
                warmup_batches: int = 0) -> Plan:
    """The epochs ``budget`` buys: steps / steps per epoch, or seconds / the
    measured seconds of one epoch (``epoch_seconds()``, called only for a time
    budget); at least one, else a BudgetError that says what one epoch costs."""
    if budget.kind == "steps":
        epochs = int(budget.amount // steps_per_epoch)
        if epochs < 1:
            raise BudgetError(f"train.budget {budget.text!r} buys no whole epoch: one epoch takes "
                              f"{steps_per_epoch} optimizer steps; give at least '{steps_per_epoch} steps', "
                              f"or a larger train.batch_size")
        return Plan(budget.text, "steps", epochs, steps_per_epoch)
    seconds = float(epoch_seconds())
    epochs = int(budget.amount // seconds) if seconds > 0 else 0
    if epochs < 1:
        raise BudgetError(f"train.budget {budget.text!r} buys no whole epoch: one epoch is estimated at "
                          f"{seconds:.1f} s on this machine (a {warmup_batches}-batch warm-up); give at least "
                          f"{_seconds_text(seconds)} or train on fewer examples")
    return Plan(budget.text, "time", epochs, steps_per_epoch, seconds, warmup_batches, load_average())


def load_average() -> Optional[float]:
    """The system's 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _seconds_text(seconds: float) -> str:
    whole = int(seconds) + 1
    return f"'{whole}s'" if whole < 120 else f"'{whole // 60 + 1}m'"
