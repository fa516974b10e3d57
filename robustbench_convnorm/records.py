"""Run records: one JSON file per run, written atomically, with everything a
table needs (config, versions, git sha, metrics, timings, flags, status)."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional

from . import atomic, reproducible

RECORD = "record.json"
SCHEMA = 1
#: a run's outcome when another live worker holds its lock (the run is theirs to finish)
LOCKED = "locked"
#: the training method of an outside model's record (evaluate --model; the leaderboard's "method" column)
EXTERNAL_METHOD = "external"
_PACKAGES = ("torch", "torchattacks", "numpy", "pandas", "robustbench_convnorm")


def write_json_atomic(obj: Any, path) -> None:
    """The record (or any JSON) written atomically; see atomic.py."""
    atomic.write_json(path, obj)


def trainable_params(model) -> int:
    """The record's "params": the number of trainable parameters (the leaderboard's column)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


#: what a run record may say about how it ended
STATUSES = ("running", "finished", "failed", "interrupted", "stopped")
#: fields every record has, with their JSON type (what the run's summary reads)
_REQUIRED = {"run_id": str, "status": str}
#: fields that must have this type where present (a finished record must hold its metrics)
_TYPED = {"metrics": dict, "evaluations": dict, "timings": dict, "flags": list}


def record_problem(record: Any, run_id: Optional[str] = None) -> Optional[str]:
    """Why ``record`` is not a run record (of ``run_id``, when given); None when it is.
    A record of another schema, or whose run id is another run's (a folder copied or
    edited by hand), must not count as this run's outcome."""
    if not isinstance(record, dict):
        return f"not a JSON object ({type(record).__name__})"
    if record.get("schema", SCHEMA) != SCHEMA:
        return f"schema {record.get('schema')!r}, not {SCHEMA}"
    for key, kind in {**_REQUIRED, **_TYPED}.items():
        if key not in record:
            if key in _REQUIRED or (key == "metrics" and record.get("status") == "finished"):
                return f"no {key}"
        elif not isinstance(record[key], kind):
            return f"its {key} is a {type(record[key]).__name__}, not a {kind.__name__}"
    if record["status"] not in STATUSES:
        return f"status {record['status']!r} is none of {', '.join(STATUSES)}"
    if not (record.get("error") is None or isinstance(record.get("error"), dict)):
        return "its error is neither null nor an object"
    if run_id is not None and record["run_id"] != run_id:
        return f"its run_id is {record['run_id']!r}, not this folder's {run_id!r}"
    return None


def inspect_record(run_dir):
    """(record, problem): the run's record when it is a valid record of the run its
    folder names, else None with what is wrong (None too when there is no file)."""
    path = Path(run_dir) / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as err:
        return None, f"{path} cannot be read as JSON ({err.__class__.__name__})"
    problem = record_problem(record, Path(run_dir).name)
    return (None, f"{path} is not this run's record: {problem}") if problem else (record, None)


def read_record(run_dir) -> Optional[Dict[str, Any]]:
    """The run's record; None when missing, unreadable, or not a valid record of
    the run its folder names (inspect_record says why): such a file never counts
    as the run's outcome."""
    return inspect_record(run_dir)[0]


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


def environment(device) -> Dict[str, Any]:
    """What changes the last digits of a run besides its config: threads,
    determinism and cuDNN flags, and the device (README numbers are exact
    only with the same block)."""
    import torch

    device = torch.device(device)
    cudnn = torch.backends.cudnn
    return {
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn": {"available": cudnn.is_available(), "enabled": cudnn.enabled, "benchmark": cudnn.benchmark,
                  "deterministic": cudnn.deterministic, "allow_tf32": cudnn.allow_tf32},
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else reproducible.cpu_model(),
        "cpu_model": reproducible.cpu_model(),
        # the CPU kernel paths: mode in effect, pinning variables, ATen capability, oneDNN (reproducible.py)
        "reproducible": reproducible.describe(),
    }


def new_record(spec, device: str, data_note: str = "") -> Dict[str, Any]:
    from .config import to_dict
    from .distributed import config_fields, record_fields

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
        "config": {**to_dict(cfg), **config_fields()},   # + data_parallel under DDP (its own identity)
        "metrics": {},
        "evaluations": {},
        "params": None,
        "timings": {},
        "flags": [],
        "lipschitz": None,
        "training": None,           # train.select / train.ema and the overfitting check (training/overfitting.py)
        "versions": versions(),
        "git_sha": git_sha(),
        "device": device,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data_note": data_note,
        "worker": None,             # host, pid, job id of the process that wrote this record
        "environment": None,        # records.environment(): threads, determinism flags, device name
        "checkpoint_notes": [],     # checkpoints set aside (failed checksum) or fallen back from
        **record_fields(),          # world_size (and the DDP settings under torchrun)
    }
