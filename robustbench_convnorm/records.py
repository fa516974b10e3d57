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


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_model": reproducible.cpu_model(),
        # the CPU kernel paths: mode in effect, pinning variables, ATen capability, oneDNN (reproducible.py)
        "reproducible": reproducible.describe(),
    }


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
