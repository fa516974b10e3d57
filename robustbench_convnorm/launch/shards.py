"""Deterministic, balanced parts of a grid, and the grid as JSON.

    --shard I/N        the I-th of N parts (I counts from 0, like SLURM_ARRAY_TASK_ID
                       with --array=0-(N-1))
    SLURM job array    with no --shard, SLURM_ARRAY_TASK_ID and the array's
                       count/min/max/step pick the part

Runs are dealt out by estimated cost, longest first, each to the part with
the least work so far (ties: grid order, then the lowest part). Runs of equal
cost are therefore dealt round-robin in grid order, which gives every part one
run of each normalizer before any part gets a second. The assignment depends
on the config alone, so every worker computes the same parts without talking
to the others; the per-run lock (lock.py) makes overlapping workers safe.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

from ..config import ConfigError, RunSpec, run_identity
from ..lock import describe_holder, read_lock
from ..records import read_record

__all__ = ["Shard", "parse_shard", "shard_from_slurm", "choose_shard", "assign", "select", "estimated_cost",
           "grid_json", "TERMINAL"]

#: Record statuses after which a run needs no more work (interrupted and
#: stopped runs resume; running ones are in progress or died mid-run).
TERMINAL = ("finished", "failed")

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    source: str  # "--shard" or "SLURM array"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """'1/4' -> Shard(1, 4); one message naming the problem otherwise."""
    m = _SHARD.match(text or "")
    if not m:
        raise ConfigError(f"--shard {text!r}: expected I/N with whole numbers, e.g. --shard 0/4 "
                          f"(part I of N, I from 0 to N-1)")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1:
        raise ConfigError(f"--shard {text}: N must be at least 1")
    if index >= count:
        hint = f" (did you mean --shard {index - 1}/{count}?)" if index == count else ""
        raise ConfigError(f"--shard {text}: I counts from 0, so it must be 0..{count - 1}{hint}")
    return Shard(index, count, "--shard")


def shard_from_slurm(env: Mapping[str, str]) -> Optional[Shard]:
    """The part a SLURM array task works on, or None outside an array."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None

    def num(name) -> Optional[int]:
        value = env.get(name)
        return int(value) if value not in (None, "") and value.lstrip("-").isdigit() else None

    task, lo, hi = num("SLURM_ARRAY_TASK_ID"), num("SLURM_ARRAY_TASK_MIN"), num("SLURM_ARRAY_TASK_MAX")
    count, step = num("SLURM_ARRAY_TASK_COUNT"), num("SLURM_ARRAY_TASK_STEP") or 1
    if task is None:
        raise ConfigError(f"SLURM_ARRAY_TASK_ID={env['SLURM_ARRAY_TASK_ID']!r} is not a number; "
                          f"give the part explicitly with --shard I/N")
    lo = 0 if lo is None else lo
    if count is None:
        count = (hi - lo) // step + 1 if hi is not None else None
    span = (hi - lo) // step + 1 if hi is not None else count
    if count is None or count != span or (task - lo) % step:
        raise ConfigError(f"this SLURM array (tasks {lo}..{hi}, step {step}, {count} tasks) is not evenly "
                          f"spaced, so its task {task} names no part of the grid; submit it as "
                          f"--array=0-(N-1) or give --shard I/N")
    return Shard((task - lo) // step, count, "SLURM array")


def choose_shard(text: Optional[str], env: Mapping[str, str]) -> Optional[Shard]:
    """--shard wins; else the SLURM array variables; else None (the whole grid)."""
    return parse_shard(text) if text is not None else shard_from_slurm(env)


def estimated_cost(spec: RunSpec) -> float:
    """Relative training work: epochs x forward-backward passes per batch x
    the fraction of the training set. Evaluation is not counted."""
    tc = spec.config.train
    passes = {"free": tc.replays, "fgsm_rs": 2, "pgd": tc.attack_steps + 1,
              "trades": tc.attack_steps + 3}.get(tc.method, 1)
    return float(tc.epochs * passes * spec.config.data.train_fraction) or 1.0


def assign(specs: Sequence[RunSpec], count: int) -> List[int]:
    """The part (0..count-1) of each run, longest-processing-time first."""
    loads = [0.0] * count
    parts = [0] * len(specs)
    costs = [estimated_cost(s) for s in specs]
    for i in sorted(range(len(specs)), key=lambda i: (-costs[i], i)):
        part = min(range(count), key=lambda k: (loads[k], k))
        parts[i] = part
        loads[part] += costs[i]
    return parts


def select(specs: Sequence[RunSpec], shard: Optional[Shard]) -> List[RunSpec]:
    if shard is None:
        return list(specs)
    return [s for s, part in zip(specs, assign(specs, shard.count)) if part == shard.index]


def grid_json(specs: Sequence[RunSpec], shard: Optional[Shard], *, config: str,
              overrides: Sequence[str] = (), device: str = "") -> Dict:
    """The grid for other tools: every run with its part, whether this
    process would run it, what it trains, and its record's status."""
    count = shard.count if shard else 1
    parts = assign(specs, count)
    runs = []
    for spec, part in zip(specs, parts):
        record = read_record(spec.run_dir)
        holder = read_lock(spec.run_dir)
        runs.append({
            "run_id": spec.run_id,
            "run_dir": str(spec.run_dir),
            "shard": part,
            "selected": shard is None or part == shard.index,
            "normalizer": spec.normalizer.label or spec.normalizer.name,
            "seed": spec.seed,
            "axes": spec.axes,
            "settings": run_identity(spec.config),
            "status": record.get("status") if record else None,
            "lock": describe_holder(holder) if holder else None,
        })
    first = specs[0].config if specs else None
    return {
        "config": config,
        "overrides": list(overrides),
        "output_dir": first.output_dir if first else None,
        "device": device,
        "shard": {"index": shard.index, "count": shard.count, "source": shard.source} if shard else None,
        "runs": runs,
    }
