"""Checkpoints that are never loaded blindly.

A run directory holds

    checkpoint.pt           the newest checkpoint (torch.save; loads with weights_only=True)
    checkpoint.prev.pt      the one before it, kept until a newer one is written and verified
    checkpoint.pt.sha256    the SHA-256 of both, in ``sha256sum -c`` format

:func:`save_checkpoint` serializes in memory, writes a unique temporary file
(atomic.py), reads it back to check its SHA-256, lists the new hash beside the
current one, moves the current checkpoint to ``checkpoint.prev.pt`` and only
then renames the new one into place. Whatever instant a process dies at, every
complete checkpoint file left behind has its hash listed, so the checksum
file is the one authority: a checkpoint is good when its SHA-256 is listed.

:func:`load_latest` (resume, ``--eval-only``) tries ``checkpoint.pt``, then
``checkpoint.prev.pt``; a file that fails its checksum or does not load is
renamed ``<name>.corrupt-<UTC time>`` and named in the log, and the next one
is tried (none left: training restarts from epoch 0). Checkpoints written
before checksums were stored load unverified, with a note saying so.
:func:`check_run_config` refuses a checkpoint whose saved run configuration
is not the run's (a file copied from another run).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
import signal
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import atomic

__all__ = ["CheckpointError", "CheckpointMismatch", "save_checkpoint", "save_atomic", "load_checkpoint",
           "load_latest", "final_checkpoint_problem", "check_run_config", "prev_path", "checksum_path",
           "sha256_file", "rng_states", "restore_rng_states", "load_model", "KILL_IN_CHECKPOINT_ENV"]

#: keys every training checkpoint holds; a file without them cannot resume a run
_TRAINING_KEYS = ("epoch", "finished", "model", "run_config")
#: Test hook: "<epoch>:<point>" SIGKILLs the process inside the checkpoint
#: write of that epoch, at ``written`` (temporary file complete), ``listed``
#: (its hash listed) or ``rotated`` (the old checkpoint moved to .prev).
KILL_IN_CHECKPOINT_ENV = "ROBUSTBENCH_CONVNORM_KILL_IN_CHECKPOINT"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted; the message names the file."""


class CheckpointMismatch(CheckpointError):
    """A sound checkpoint that another configuration wrote."""


def prev_path(path) -> Path:
    """checkpoint.pt -> checkpoint.prev.pt"""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _main_path(path: Path) -> Path:
    stem = path.stem
    return path.with_name(stem[:-len(".prev")] + path.suffix) if stem.endswith(".prev") else path


def checksum_path(path) -> Path:
    """checkpoint.pt (or checkpoint.prev.pt) -> checkpoint.pt.sha256"""
    main = _main_path(Path(path))
    return main.with_name(main.name + ".sha256")


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _listed(path: Path) -> Optional[Dict[str, str]]:
    """{hash: name} from the checksum file, or None when there is none."""
    try:
        text = checksum_path(path).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return {}  # unreadable: nothing is vouched for
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            out[parts[0].lower()] = parts[1].lstrip("*")
    return out


def _vouched(path: Path, listed: Optional[Dict[str, str]]) -> Optional[str]:
    """The file's SHA-256 when it exists and is good (listed, or written before
    checksums were kept), else None."""
    if not path.exists():
        return None
    digest = sha256_file(path)
    return digest if listed is None or digest in listed else None


def _fault(point: str, state: Dict[str, Any]) -> None:
    if os.environ.get(KILL_IN_CHECKPOINT_ENV) == f"{state.get('epoch')}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(state: Dict[str, Any], path, *, guard: Optional[Callable[[], None]] = None) -> Path:
    """Write ``state`` to ``path`` with its SHA-256 listed, keeping the current
    good checkpoint as ``checkpoint.prev.pt`` (see the module docstring).
    ``guard()`` runs just before anything is renamed (the run's lock check);
    if it raises, the files on disk are left as they were."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    digest = hashlib.sha256(data).hexdigest()
    prev = prev_path(path)

    def commit(tmp: Path) -> None:
        if sha256_file(tmp) != digest:
            raise CheckpointError(f"{path}: the checkpoint just written reads back differently (a disk "
                                  f"problem?); the previous checkpoint is kept")
        _fault("written", state)
        if guard is not None:
            guard()
        # the good checkpoint to keep as .prev: the current one, else the present .prev
        listed = _listed(path)
        current = _vouched(path, listed)
        rotate = current is not None and current != digest
        keep = current if rotate else _vouched(prev, listed)
        lines = [f"{digest}  {path.name}"] + ([f"{keep}  {prev.name}"] if keep else [])
        atomic.write_text(checksum_path(path), "\n".join(lines) + "\n")
        _fault("listed", state)
        if rotate:
            os.replace(path, prev)
            _fault("rotated", state)

    atomic.atomic_write(path, lambda tmp: tmp.write_bytes(data), before_replace=commit)
    return path


def save_atomic(obj: Dict[str, Any], path) -> None:
    """Kept for callers of the old name: a checksummed checkpoint write."""
    save_checkpoint(obj, path)


def load_checkpoint(path, map_location="cpu", *, log: Optional[Callable[[str], Any]] = None) -> Dict[str, Any]:
    """Read one checkpoint after checking its SHA-256 against the checksum
    file beside it; raises :class:`CheckpointError` naming the file when it
    does not match or cannot be read. What it holds is the caller's to check.
    A checkpoint from before checksums loads unverified (``log``, when
    given, is told)."""
    path = Path(path)
    listed = _listed(path)
    data = path.read_bytes()  # read once: the bytes hashed are the bytes loaded
    if listed is not None:
        if hashlib.sha256(data).hexdigest() not in listed:
            raise CheckpointError(f"{path} does not match the SHA-256 listed in {checksum_path(path).name} "
                                  f"(damaged, truncated, or not the file this run wrote)")
    try:
        ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch reports damage as many types (RuntimeError, EOFError, UnpicklingError...)
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({err.__class__.__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); it is truncated or damaged") from None
    if listed is None and log is not None:
        log(f"  {path.name} has no stored checksum (written before checksums were kept); loaded unverified")
    return ckpt


def _set_aside(path: Path) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, aside)
    return aside


def load_latest(path, map_location="cpu", log: Callable[[str], Any] = print
                ) -> Tuple[Optional[Dict[str, Any]], Optional[Path], List[str]]:
    """The newest good checkpoint among ``path`` and its ``.prev``: (checkpoint or
    None, the file it came from, notes on files set aside). A bad file is
    renamed ``<name>.corrupt-<time>`` (never deleted) and the next is tried."""
    path = Path(path)
    notes: List[str] = []
    for cand in (path, prev_path(path)):
        if not cand.exists():
            continue
        try:
            ckpt = load_checkpoint(cand, map_location, log=log)
            missing = [k for k in _TRAINING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
            if missing:
                raise CheckpointError(f"{cand} is not a training checkpoint (no {', '.join(missing)})")
        except FileNotFoundError:
            continue
        except CheckpointError as err:
            aside = _set_aside(cand)
            notes.append(f"{err}; set aside as {aside.name}")
            log(f"  {notes[-1]}")
            continue
        if cand != path:
            why = "the newer one was set aside" if notes else f"{path.name} is missing (a write was interrupted)"
            notes.append(f"resumed from the previous checkpoint {cand.name} (epoch {ckpt['epoch']}): {why}")
            log(f"  {notes[-1]}")
        return ckpt, cand, notes
    if notes:
        notes.append("no good checkpoint is left: training restarts from epoch 0")
        log(f"  {notes[-1]}")
    return None, None, notes


def final_checkpoint_problem(path) -> Optional[str]:
    """Why the newest checkpoint at ``path`` cannot back a finished run's
    results, or None. A file failing its checksum, one set aside as
    ``.corrupt-*`` and not replaced, or a missing one beside a ``.prev``: the
    run resumes from the previous good checkpoint and is re-evaluated. A
    folder with no checkpoint file at all (removed on purpose, to save space)
    is no problem: its results stand."""
    path = Path(path)
    if path.exists():
        if _vouched(path, _listed(path)) is None:
            return f"its final checkpoint {path.name} does not match its listed SHA-256 (damaged)"
        return None
    aside = sorted(path.parent.glob(f"{path.name}.corrupt-*"))
    if aside:
        return f"its final checkpoint was found damaged and set aside as {aside[-1].name}"
    if prev_path(path).exists():
        return f"its final checkpoint {path.name} is missing beside {prev_path(path).name}"
    return None


def check_run_config(ckpt: Dict[str, Any], cfg, path) -> None:
    """Raise :class:`CheckpointMismatch` when the checkpoint was trained with
    another configuration than ``cfg`` (compared as the run id compares them)."""
    from .config import run_identity
    from .identity import flatten

    mine, theirs = flatten(run_identity(cfg)), flatten(run_identity(ckpt.get("run_config") or {}))
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if not keys:
        return
    shown = "; ".join(f"{k}: {theirs.get(k)!r} in the checkpoint, {mine.get(k)!r} in this run" for k in keys[:6])
    more = f" (and {len(keys) - 6} more)" if len(keys) > 6 else ""
    raise CheckpointMismatch(f"{path} was trained with another configuration ({shown}{more}); it was copied "
                             f"from another run? Move it away (or use --force to retrain this run)")


def rng_states(device: torch.device) -> Dict[str, Any]:
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def load_model(path, device="cpu"):
    """Rebuild a trained model from a run's checkpoint (checksum verified):
    (model in eval mode, run config dict)."""
    from .builders import build_run_model
    from .config import config_from_dict

    ckpt = load_checkpoint(path, map_location=device)
    cfg = config_from_dict(ckpt["run_config"], source=f"{path} (saved config)")
    model = build_run_model(cfg, ckpt["model_meta"]).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt["run_config"]
