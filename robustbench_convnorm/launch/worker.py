"""What every launcher hands a worker, and what it does when a worker dies.

A worker is ``python -m robustbench_convnorm.run CONFIG --set ... --run-id ID``
(plus --only, --force or --eval-only when the launch had them): the config's
path, the overrides and a run id, never an object holding data.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..config import RunSpec
from ..lock import RunLocked, acquire
from ..records import LOCKED, RECORD, new_record, read_record, write_json_atomic

__all__ = ["code_root", "worker_argv", "worker_env", "passed_flags", "mark_lost", "verdict_predates"]


def code_root() -> Optional[str]:
    """The folder holding this package when it runs from a checkout (for the
    workers' PYTHONPATH); None when it is installed."""
    root = Path(__file__).resolve().parents[2]
    if any(part in ("site-packages", "dist-packages") for part in root.parts):
        return None
    return str(root)


def passed_flags(args) -> List[str]:
    """The flags of the launch that each worker repeats."""
    flags = []
    if getattr(args, "only", None):
        # One token: a TEXT that starts with "-" (e.g. "-lot-") would read as a flag.
        flags += [f"--only={args.only}"]
    flags += [flag for flag, on in (("--force", getattr(args, "force", False)),
                                    ("--eval-only", getattr(args, "eval_only", False)),
                                    ("--replace-evaluations", getattr(args, "replace_evaluations", False))) if on]
    return flags


def verdict_predates(spec: RunSpec, started: float) -> bool:
    """Whether the run's record was last written before ``started``: the verdict
    of an earlier launch, not of a worker that failed before reaching its run."""
    try:
        return os.stat(Path(spec.run_dir) / RECORD).st_mtime < started
    except OSError:
        return False


def worker_argv(config: str, overrides: Sequence[str], run_id: str, flags: Sequence[str] = ()) -> List[str]:
    argv = [str(config)]
    for expr in overrides:
        argv += ["--set", expr]
    return argv + ["--run-id", run_id, *flags]


def worker_env(base: Optional[Dict[str, str]] = None, *, threads: Optional[int] = None,
               gpu: Optional[str] = None) -> Dict[str, str]:
    """The environment of a local worker: this code first on the path, its
    share of the CPU threads, its GPU."""
    env = dict(os.environ if base is None else base)
    root = code_root()
    if root:
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def mark_lost(spec: RunSpec, device: str, reason: str) -> Optional[str]:
    """Record a run as failed when its worker died without saying how it
    ended (killed, out of memory); the status it had, or None if it needed
    no mark. Takes the run's lock first: a dead worker's lock is stale."""
    record = read_record(spec.run_dir)
    if record and record.get("status") != "running":
        return None
    try:
        lock = acquire(spec.run_dir, owner="launcher (marking a lost run)")
    except RunLocked:
        return None  # someone is working on it again
    try:
        record = read_record(spec.run_dir) or new_record(spec, device)
        if record.get("status") != "running":
            return None
        record["status"] = "failed"
        record["error"] = {"epoch": None, "reason": reason}
        write_json_atomic(record, spec.run_dir / RECORD)
        return "running"
    finally:
        lock.release()


def done_line(statuses: Mapping[str, Optional[str]]) -> Tuple[str, List[str]]:
    """The closing line of a grid (the run command's and both launchers'), from
    each run id's outcome, and the run ids that did not finish. A run held by
    another live worker is counted apart: its outcome is that worker's."""
    held = [r for r, s in statuses.items() if s == LOCKED]
    failed = [r for r, s in statuses.items() if s not in ("finished", LOCKED)]
    line = (f"done: {len(statuses) - len(failed) - len(held)} finished, {len(failed)} not"
            + (f" ({', '.join(failed)})" if failed else "")
            + (f", {len(held)} held by other workers" if held else ""))
    return line, failed
