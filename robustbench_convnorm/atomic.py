"""Atomic file writes: the one way this project writes a file that a reader,
a resumed run or a concurrent worker may open.

Every write goes to a temporary file that no other writer can share (its name
holds the host, the pid and a random part), is flushed to disk, and then
renamed over the target, so a reader sees the old file or the new one, never
half of either. A process killed mid-write leaves only its temporary file,
which :func:`remove_orphan_temps` deletes once its writer is gone.

    from robustbench_convnorm import atomic
    atomic.write_json(run_dir / "record.json", record)
    atomic.write_text(out / "leaderboard.md", md)
    atomic.save_figure(fig, out / "plot.png", dpi=120)

Checkpoints go through checkpoints.save_checkpoint, which writes them this
way and lists each file's SHA-256 beside it, for the check on load.

The one exception is a log (``run.log``), which grows line by line while its
run works: :func:`open_append` opens it for appending, so a reader may see a
last line cut short, never an earlier line changed.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Union

__all__ = ["atomic_write", "write_text", "write_bytes", "write_json", "save_figure",
           "set_writes_enabled", "writes_enabled", "write_csv", "open_append", "remove_orphan_temps", "temp_name",
           "TEMP_SUFFIX", "pid_alive"]

PathLike = Union[str, os.PathLike]
TEMP_SUFFIX = ".tmp"
# .<target name>.<host>.<pid>.<random>.tmp
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<host>[^.]*)\.(?P<pid>\d+)\.(?P<rand>[0-9a-f]{8})\.tmp$")


def _host() -> str:
    # dots would make the name ambiguous to parse back
    return socket.gethostname().split(".")[0].replace(".", "_") or "host"


def temp_name(target: Path) -> Path:
    """A temporary path beside ``target`` that no other process or call will pick."""
    return target.with_name(f".{target.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_WRITES_ENABLED = True


def set_writes_enabled(enabled: bool) -> None:
    """Switch every write of this module on or off for the whole process. The
    data-parallel ranks other than 0 run with writes off (distributed.py):
    they compute what rank 0 writes, and must not race it for the same files."""
    global _WRITES_ENABLED
    _WRITES_ENABLED = bool(enabled)


def writes_enabled() -> bool:
    return _WRITES_ENABLED


def atomic_write(path: PathLike, write: Callable[[Path], None], *, fsync: bool = True,
                 before_replace: Optional[Callable[[Path], None]] = None) -> Path:
    """Call ``write(tmp)`` to fill a unique temporary file, then rename it over
    ``path``. On any error (Ctrl-C included) the temporary file is removed and
    ``path`` is left as it was. ``before_replace(tmp)`` runs once the
    temporary file is complete and on disk, just before the rename: it may
    check it, or move the old ``path`` aside (checkpoints keep the previous
    one); if it raises, nothing is renamed. With writes switched off
    (set_writes_enabled), nothing is written and ``before_replace`` does not run."""
    path = Path(path)
    if not _WRITES_ENABLED:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    if fsync:
        _fsync_dir(path.parent)
    return path


def write_bytes(path: PathLike, data: bytes, **kw) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), **kw)


def write_text(path: PathLike, text: str, **kw) -> Path:
    def _write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return atomic_write(path, _write, **kw)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            pass
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def write_json(path: PathLike, obj: Any, *, indent: Optional[int] = 2, **kw) -> Path:
    """JSON (numpy and torch scalars become numbers), with a final newline."""
    return write_text(path, json.dumps(obj, indent=indent, default=_jsonable) + "\n", **kw)


def write_csv(path: PathLike, frame, **to_csv_kw) -> Path:
    """A pandas DataFrame as CSV (``index=False`` unless given)."""
    to_csv_kw.setdefault("index", False)
    return write_text(path, frame.to_csv(**to_csv_kw))


def save_figure(fig, path: PathLike, **savefig_kw) -> Path:
    """A matplotlib figure; the format follows the target's suffix."""
    path = Path(path)
    savefig_kw.setdefault("format", path.suffix.lstrip(".") or "png")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, **savefig_kw))


def open_append(path: PathLike):
    """A text file opened for appending, line-buffered (a log); None with
    writes switched off (the data-parallel ranks other than 0)."""
    if not _WRITES_ENABLED:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", encoding="utf-8", buffering=1)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_orphan_temps(folder: PathLike, *, recursive: bool = False) -> List[Path]:
    """Delete temporary files left in ``folder`` by writers that died (same host,
    pid gone). Files of live writers, or of other hosts, are left alone: their
    writers may still rename them. Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host = _host()
    removed: List[Path] = []
    candidates: Iterable[Path] = folder.rglob(f"*{TEMP_SUFFIX}") if recursive else folder.glob(f"*{TEMP_SUFFIX}")
    for path in candidates:
        m = _TEMP_RE.match(path.name)
        if not m or m.group("host") != host:
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed
