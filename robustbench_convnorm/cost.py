"""What a run cost, measured where the work happens and written by the record
(the leaderboard reads it, never recomputes it).

Peak memory is the device's: on CUDA ``torch.cuda.max_memory_allocated`` (the
tensors' high-water mark, reset before training); on the CPU the process's
resident-set high-water mark (``VmHWM``), reset before training through
``/proc/self/clear_refs`` where Linux allows it, after giving the memory earlier
runs freed back to the system (``malloc_trim``), so that a run after others in
one process reports its own peak (plus what the process holds for all runs:
torch, the data sets it keeps). Where the reset is not possible the peak is
the process's since it started, and ``peak_memory_scope`` says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import resource
import sys
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional

import torch


def _release_freed_memory() -> None:
    """Give memory that earlier runs of this process freed back to the system
    (glibc's malloc keeps it mapped otherwise), so that a run's resident-set peak
    starts from what is live now and not from the largest run before it."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc: the peak may then include memory earlier runs freed


def reset_peak_memory(device: torch.device) -> str:
    """Start a new high-water mark; returns its scope: 'run' when reset, 'process' when not."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "run"
    _release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
        return "run"
    except OSError:
        return "process"


def peak_memory_mb(device: torch.device) -> float:
    """The high-water mark since the last reset (CUDA: allocated tensors; CPU: resident set), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2 ** 20 if sys.platform == "darwin" else 1024.0)


def images_per_second(log_rows: Iterable[Mapping]) -> float:
    """Training images (forward-backward passes, replays counted) per second over
    every logged epoch: the images of each epoch are its rate times its seconds."""
    images = seconds = 0.0
    for row in log_rows:
        rate, secs = row.get("images_per_second"), row.get("seconds")
        if rate is not None and secs:
            images += float(rate) * float(secs)
            seconds += float(secs)
    return images / seconds if seconds > 0 else math.nan


def training_cost(result, params: Optional[int], device: torch.device, peak_mb: float, scope: str) -> Dict:
    """The training half of a record's ``cost`` (from a training.TrainResult)."""
    return {"train_seconds": result.train_seconds, "train_seconds_per_epoch": result.seconds_per_epoch,
            "train_images_per_second": images_per_second(result.log), "epochs": result.epochs_done,
            "params": params, "peak_memory_mb": peak_mb, "peak_memory_scope": scope,
            "peak_memory_kind": "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_rss_high_water"}


def eval_seconds(evaluations: Mapping[str, Mapping]) -> Dict[str, float]:
    """Each evaluator's seconds, from the record's evaluations."""
    return {name: float(ev["seconds"]) for name, ev in evaluations.items() if ev.get("seconds") is not None}
