"""One worker per run: an exclusive lock file in the run's directory.

    with run_lock(run_dir) as lock:       # raises RunLocked naming the holder
        ...train and evaluate...
        lock.ensure_held()                # before writing results: raises LockLost

The lock file (``run_dir/.lock``) is created atomically with ``O_CREAT |
O_EXCL``, which works on local disks and on the NFS of a cluster where
``flock`` may not. It holds the owner (host, pid, the process's start time,
the SLURM job id when there is one, a random token) and a heartbeat that a
background thread refreshes while the run works. Another worker that finds
the lock skips the run. A lock is taken over when it is stale:

- its process is gone (same host; the start time guards against a reused pid);
- or its heartbeat is older than ``stale_after`` seconds (any host: a killed
  node cannot clean up);
- or it was taken by an earlier incarnation of this process's SLURM job (same
  job id, lower ``SLURM_RESTART_COUNT``): the job was requeued (preempted,
  timed out) and may have restarted on another node.

Taking over goes through a second file (``.lock.takeover``, also created
with O_EXCL), so two workers that find the same stale lock cannot both win.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from .atomic import pid_alive

__all__ = ["run_lock", "RunLock", "RunLocked", "LockLost", "read_lock", "lock_is_stale", "worker_identity",
           "LOCK_FILE", "HEARTBEAT_SECONDS", "STALE_AFTER_SECONDS"]

LOCK_FILE = ".lock"
TAKEOVER_FILE = ".lock.takeover"
#: seconds between heartbeats, and the age after which a heartbeat is dead
#: (overridable by environment for clusters with slow shared disks, and tests)
HEARTBEAT_SECONDS = float(os.environ.get("ROBUSTBENCH_CONVNORM_HEARTBEAT", 30))
STALE_AFTER_SECONDS = float(os.environ.get("ROBUSTBENCH_CONVNORM_LOCK_STALE", 600))
# a takeover file older than this belongs to a worker that died while taking over
_TAKEOVER_STALE = 60.0


class RunLocked(RuntimeError):
    """Another live worker holds this run."""

    def __init__(self, run_dir: Path, holder: Dict[str, Any]):
        self.run_dir, self.holder = Path(run_dir), holder
        super().__init__(f"{self.run_dir.name} is being worked on by {describe_holder(holder)}")


class LockLost(RuntimeError):
    """This worker's lock was taken over (its heartbeat stalled): stop writing."""


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


def _proc_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), to tell a
    reused pid from the original process; None where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _job_id() -> Optional[str]:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def worker_identity(owner: Optional[str] = None) -> Dict[str, Any]:
    """Who this process is, as the lock file and the run's record name it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "job_id": _job_id(), "owner": owner}


def _job_restart() -> int:
    """How often SLURM has requeued this job (0 outside SLURM)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def describe_holder(holder: Dict[str, Any]) -> str:
    parts = [f"pid {holder.get('pid')} on {holder.get('host')}"]
    if holder.get("job_id"):
        parts.append(f"job {holder['job_id']}")
    if holder.get("owner"):
        parts.append(str(holder["owner"]))
    if holder.get("started"):
        parts.append(f"since {holder['started']}")
    age = holder.get("_heartbeat_age")
    if age is not None:
        parts.append(f"heartbeat {age:.0f}s ago")
    return ", ".join(parts)


def read_lock(run_dir) -> Optional[Dict[str, Any]]:
    """The lock's content plus ``_heartbeat_age`` (seconds), or None if there is
    no lock. An unreadable lock (a worker died between create and write) reads
    as an empty holder whose heartbeat is the file's age."""
    path = Path(run_dir) / LOCK_FILE
    try:
        st = path.stat()
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {"_heartbeat_age": 0.0}
    try:
        holder = json.loads(text)
        if not isinstance(holder, dict):
            holder = {}
    except ValueError:
        holder = {}
    beat = max(st.st_mtime, float(holder.get("heartbeat_unix", 0) or 0))
    holder["_heartbeat_age"] = max(0.0, _now() - beat)
    return holder


def lock_is_stale(holder: Dict[str, Any], stale_after: float = None) -> Optional[str]:
    """Why a held lock may be taken over, or None if its owner is alive."""
    stale_after = STALE_AFTER_SECONDS if stale_after is None else stale_after
    age = holder.get("_heartbeat_age", 0.0)
    mine = _job_id()
    if mine and holder.get("job_id") == mine and int(holder.get("job_restart") or 0) < _job_restart():
        # an earlier incarnation of this very job, requeued since (preempted, timed
        # out, node failure): it cannot be running, wherever its node is
        return f"it was held by this SLURM job ({mine}) before it was requeued"
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        pid = holder["pid"]
        if not pid_alive(pid):
            return f"its process (pid {pid}) is gone"
        start = holder.get("proc_start")
        if start is not None and _proc_start(pid) not in (None, start):
            return f"pid {pid} now belongs to another process"
    if age > stale_after:
        return f"its heartbeat is {age:.0f}s old (timeout {stale_after:.0f}s)"
    if not holder.get("token") and age > _TAKEOVER_STALE:
        return "it was never completed"
    return None


@dataclass
class RunLock:
    """A held lock; refreshes its heartbeat in a daemon thread until released."""
    run_dir: Path
    token: str
    heartbeat: float = HEARTBEAT_SECONDS
    took_over: Optional[str] = None  # why an earlier stale lock was replaced
    _stop: threading.Event = None
    _thread: threading.Thread = None
    _lost: bool = False

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_FILE

    def held(self) -> bool:
        try:
            return json.loads(self.path.read_text()).get("token") == self.token
        except (OSError, ValueError, AttributeError):
            return False

    def ensure_held(self) -> None:
        if self._lost or not self.held():
            self._lost = True
            raise LockLost(f"the lock of {self.run_dir.name} was taken over by another worker "
                           f"({describe_holder(read_lock(self.run_dir) or {})}); this worker stops "
                           f"without writing")

    def beat(self) -> None:
        if self.held():
            now = _now()
            os.utime(self.path, (now, now))
        else:
            self._lost = True

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.beat()
            except OSError:
                pass

    def start(self) -> "RunLock":
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_loop, name=f"heartbeat:{self.run_dir.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)
        if self.held():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _create(run_dir: Path, owner: Optional[str]) -> Optional[str]:
    """Create the lock file exclusively; its token, or None if it exists."""
    token = secrets.token_hex(8)
    now = _now()
    content = {**worker_identity(owner), "job_restart": _job_restart(), "proc_start": _proc_start(os.getpid()),
               "started": _iso(now), "heartbeat_unix": now, "token": token}
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as f:
        json.dump(content, f)
        f.flush()
        os.fsync(f.fileno())
    return token


def _take_over(run_dir: Path, stale_after: float) -> Optional[str]:
    """Remove a stale lock under the takeover file; the reason, or None if the
    lock turned out live (or someone else is taking it over)."""
    guard = run_dir / TAKEOVER_FILE
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(OSError):
            if _now() - guard.stat().st_mtime > _TAKEOVER_STALE:
                guard.unlink()  # its taker died; the next attempt may proceed
        return None
    os.close(fd)
    try:
        holder = read_lock(run_dir)
        if holder is None:
            return "no lock"
        why = lock_is_stale(holder, stale_after)
        if why is None:
            return None
        with contextlib.suppress(FileNotFoundError):
            (run_dir / LOCK_FILE).unlink()
        return f"took over the lock of {describe_holder(holder)}: {why}"
    finally:
        with contextlib.suppress(FileNotFoundError):
            guard.unlink()


def acquire(run_dir, *, owner: Optional[str] = None, stale_after: float = None,
            heartbeat: float = None) -> RunLock:
    """Take the run's lock or raise :class:`RunLocked`. The caller must
    ``release()`` it (or use :func:`run_lock`)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stale_after = STALE_AFTER_SECONDS if stale_after is None else stale_after
    took_over = None
    for _ in range(3):
        token = _create(run_dir, owner)
        if token is not None:
            lock = RunLock(run_dir, token, HEARTBEAT_SECONDS if heartbeat is None else heartbeat, took_over)
            return lock.start()
        why = _take_over(run_dir, stale_after)
        if why is None:
            holder = read_lock(run_dir)
            if holder is None:
                continue  # released in between: try again
            raise RunLocked(run_dir, holder)
        took_over = why
    raise RunLocked(run_dir, read_lock(run_dir) or {})


@contextlib.contextmanager
def run_lock(run_dir, *, owner: Optional[str] = None, stale_after: float = None,
             heartbeat: float = None) -> Iterator[RunLock]:
    """Hold the run's lock for the ``with`` block (see the module docstring)."""
    lock = acquire(run_dir, owner=owner, stale_after=stale_after, heartbeat=heartbeat)
    try:
        yield lock
    finally:
        lock.release()
