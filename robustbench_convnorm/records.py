"""Run records: one JSON file per run, written atomically, with everything a
table needs (config, versions, git sha, metrics, timings, flags, status)."""
from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional

from . import atomic

RECORD = "record.json"
SCHEMA = 1
_PACKAGES = ("torch", "torchattacks", "numpy", "pandas", "robustbench_convnorm")


def write_json_atomic(obj: Any, path) -> None:
    """The record (or any JSON) written atomically; see atomic.py."""
    atomic.write_json(path, obj)


def read_record(run_dir) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def versions() -> Dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_sha() -> Optional[str]:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty else "")) if sha else None


def new_record(spec, device: str, data_note: str = "") -> Dict[str, Any]:
    from .config import to_dict
    from .distributed import record_fields

    cfg = spec.config
    entry = spec.normalizer
    return {
        "schema": SCHEMA,
        "run_id": spec.run_id,
        "status": "running",
        "error": None,
        "dataset": cfg.data.source if cfg.data.source != "imagefolder"
        else cfg.data.options.get("name", "imagefolder"),
        "arch": cfg.model.arch,
        "normalizer": entry.label or entry.name,
        "normalizer_name": entry.name,
        "normalizer_options": entry.options,
        "batchnorm": cfg.batchnorm,
        "train_method": cfg.train.method,
        "train_eps": cfg.train.eps if cfg.train.method != "natural" else 0.0,
        "seed": spec.seed,
        "grid_seeds": spec.grid_seeds,
        "grid_axes": spec.axes,
        "config": to_dict(cfg),
        "metrics": {},
        "evaluations": {},
        "params": None,
        "timings": {},
        "flags": [],
        "lipschitz": None,
        "versions": versions(),
        "git_sha": git_sha(),
        "device": device,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data_note": data_note,
        **record_fields(),  # world_size (and the DDP settings under torchrun)
    }
