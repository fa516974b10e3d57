"""One complete leaderboard from many workers on one output_dir.

Workers that ran part of a grid (a shard, one launcher task) build the
leaderboard only when every run of the grid has a terminal record
(finished or failed): each checks right after writing its own record, so the
last to finish sees the grid complete. Builds take the output's leaderboard
lock (lock.py, in ``<output_dir>/.leaderboard/``), so two builds never
interleave their files; a worker that finds the lock held waits for it. A
stamp beside the lock names the records the last build read (path, mtime,
size): a build over the same records is skipped, so a grid's leaderboard is
built once even when several workers finish together.

``python -m robustbench_convnorm.leaderboard OUTPUT_DIR`` rebuilds it from
the records at any time.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .. import atomic
from ..config import RunSpec
from ..lock import RunLocked, acquire
from ..records import RECORD, read_record
from .shards import TERMINAL

__all__ = ["pending", "failed_since", "build_once", "build_if_complete", "LOCK_DIR", "STAMP"]

LOCK_DIR = ".leaderboard"
STAMP = "last_build.json"
#: how long a builder waits for another builder's lock before giving up
WAIT_SECONDS = 600.0


def pending(specs: Sequence[RunSpec]) -> List[str]:
    """Runs of ``specs`` whose record is missing or not terminal."""
    return [s.run_id for s in specs if (read_record(s.run_dir) or {}).get("status") not in TERMINAL]


def failed_since(spec: RunSpec, since: float) -> Optional[Dict]:
    """The run's record if another worker recorded it failed after ``since``
    (a Unix time): a worker that started before that failure leaves it for a
    rerun instead of training it a second time."""
    path = spec.run_dir / RECORD
    try:
        if path.stat().st_mtime < since:
            return None
    except FileNotFoundError:
        return None
    record = read_record(spec.run_dir)
    return record if record and record.get("status") == "failed" else None


def _fingerprint(output_dir: Path) -> str:
    h = hashlib.sha256()
    for path in sorted((output_dir / "runs").glob(f"*/{RECORD}")):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        h.update(f"{path.parent.name}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    return h.hexdigest()


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (a file the last build wrote) lies in ``folder``."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _build(output_dir: Path) -> Dict[str, str]:
    from ..leaderboard import build_leaderboard

    return {k: str(v) for k, v in (build_leaderboard(output_dir) or {}).items()}


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def build_once(output_dir, *, log: Callable[[str], None] = print, warn: Callable[[str], None] = _warn,
               wait_seconds: float = WAIT_SECONDS,
               build: Callable[[Path], Dict[str, str]] = _build) -> Optional[Dict[str, str]]:
    """Build the leaderboard of ``output_dir`` under its leaderboard lock,
    unless the last build read exactly these records. Returns the written
    paths (or the last build's), None when nothing was built. A failed
    build is reported, never raised: the records are the truth."""
    output_dir = Path(output_dir)
    if not (output_dir / "runs").is_dir() or not atomic.writes_enabled():
        return None
    lock_dir = output_dir / LOCK_DIR
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            lock = acquire(lock_dir, owner="leaderboard build")
            break
        except RunLocked as err:
            if time.monotonic() > deadline:
                warn(f"leaderboard not built: {err}; rebuild it with "
                    f"python -m robustbench_convnorm.leaderboard {output_dir}")
                return None
            time.sleep(0.5)
    try:
        fingerprint = _fingerprint(output_dir)
        try:
            stamp = json.loads((lock_dir / STAMP).read_text())
        except (OSError, ValueError):
            stamp = {}
        paths = stamp.get("paths") or {}
        # a results folder copied or moved elsewhere holds the old folder's stamp: rebuild there
        here = stamp.get("output_dir") == str(output_dir.resolve()) and \
            all(_inside(Path(p), output_dir) for p in paths.values())
        if stamp.get("fingerprint") == fingerprint and paths and here and all(Path(p).exists() for p in paths.values()):
            log(f"leaderboard up to date: {', '.join(paths.values())}")
            return paths
        try:
            paths = build(output_dir)
        except Exception as err:  # the records are the truth; a table can be rebuilt later
            warn(f"leaderboard not built: {err.__class__.__name__}: {err}")
            return None
        atomic.write_json(lock_dir / STAMP, {
            "fingerprint": fingerprint, "paths": paths, "output_dir": str(output_dir.resolve()),
            "runs": sorted(p.parent.name for p in (output_dir / "runs").glob(f"*/{RECORD}")),
            "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "by": f"pid {os.getpid()} on {socket.gethostname()}"})
        if paths:
            log(f"leaderboard: {', '.join(paths.values())}")
        return paths
    finally:
        lock.release()


def build_if_complete(specs: Sequence[RunSpec], output_dir, *, log: Callable[[str], None] = print,
                      **kw) -> Optional[Dict[str, str]]:
    """The last worker's duty: build once every run of ``specs`` has ended."""
    left = pending(specs)
    if left:
        log(f"leaderboard: {len(left)} of {len(specs)} run(s) of the grid not finished yet; the worker "
            f"that finishes the last one builds it (or: python -m robustbench_convnorm.leaderboard {output_dir})")
        return None
    return build_once(output_dir, log=log, **kw)
