"""Launcher settings: the config's ``launcher:`` section, then the command
line's flags over it (``--set launcher.KEY=VALUE`` works like any override).

    launcher:
      max_parallel: 8          # SLURM: array tasks at once; local: runs at once
      partition: gpu
      account: my-lab
      time: "4:00:00"          # per task: minutes, or [D-]HH:MM[:SS]
      gpus_per_task: 1         # GPUs of each run (default: 1, 0 with device: cpu)
      cpus_per_task: 8
      mem_gb: 32
      sbatch: ["--qos=high", "--constraint=a100"]   # extra #SBATCH lines
      setup: ["module load cuda/12.1"]              # shell lines before the task starts
      tasks_per_node: 1        # >1: each run data-parallel over that many SLURM tasks
      executor: {slurm_exclude: node12}             # any submitit parameter, validated by submitit
      workers: 4               # --launcher local: runs at once
      gpus: [0, 1, 2, 3]       # --launcher local: a GPU per worker (repeat one to share it)
      sync_batchnorm: false    # under torchrun / tasks_per_node > 1: SyncBatchNorm (CUDA only)

None of these is part of a run's id: a run launched any way is the same run.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Union

from ..config import ConfigError, _Ctx, _build, _opt

__all__ = ["LauncherOptions", "add_arguments", "resolve", "parse_minutes", "parse_gpus", "LAUNCHERS"]

LAUNCHERS = ("slurm", "local")


@dataclass
class LauncherOptions:
    max_parallel: Optional[int] = _opt(None, min=1, doc="array tasks (SLURM) or runs (local) at once")
    partition: Optional[str] = _opt(None, doc="SLURM partition")
    account: Optional[str] = _opt(None, doc="SLURM account")
    time: Optional[int] = _opt(None, doc="time limit per task, minutes ([D-]HH:MM[:SS] accepted)")
    gpus_per_task: Optional[int] = _opt(None, min=0, doc="GPUs of each run (default 1; 0 with device: cpu)")
    cpus_per_task: Optional[int] = _opt(None, min=1, doc="CPU cores of each run")
    mem_gb: Optional[float] = _opt(None, min=0.0, min_exclusive=True, doc="memory of each run, GB")
    sbatch: List[str] = _opt(factory=list, doc="extra sbatch options, e.g. ['--qos=high']")
    setup: List[str] = _opt(factory=list, doc="shell lines run before each task (module load, ...)")
    job_name: Optional[str] = _opt(None, doc="SLURM job name (default: rbcn-<config name>)")
    python: Optional[str] = _opt(None, doc="python command of the tasks (default: this interpreter)")
    tasks_per_node: int = _opt(1, min=1, doc="SLURM tasks per run: >1 trains each run data-parallel")
    executor: Dict[str, Any] = _opt(factory=dict, doc="more submitit parameters, passed through")
    cluster: str = _opt("slurm", choices=["slurm", "local", "debug"],
                        doc="submitit's cluster: slurm; local and debug run the same code without SLURM")
    workers: Optional[int] = _opt(None, min=1, doc="--launcher local: runs at once")
    gpus: Optional[List[int]] = _opt(None, doc="--launcher local: one GPU index per worker")
    sync_batchnorm: bool = _opt(False, doc="data-parallel runs: BatchNorm becomes SyncBatchNorm (CUDA)")
    wait: bool = _opt(False, doc="--launcher slurm: block until every task ends, then report")
    poll_seconds: float = _opt(10.0, min=0.0, min_exclusive=True, doc="--wait: seconds between checks")


# command-line flags: (flag, option field, argparse keywords)
_FLAGS = [
    ("--max-parallel", "max_parallel", dict(type=int, metavar="N", help="SLURM: array tasks at once")),
    ("--wait", "wait", dict(action="store_true", default=None,
                            help="SLURM: block until every task has ended, report, exit 1 if a run failed")),
    ("--partition", "partition", dict(metavar="NAME", help="SLURM partition")),
    ("--account", "account", dict(metavar="NAME", help="SLURM account")),
    ("--time", "time", dict(metavar="LIMIT", help="SLURM time limit per task: minutes or [D-]HH:MM[:SS]")),
    ("--gpus-per-task", "gpus_per_task", dict(type=int, metavar="N", help="SLURM: GPUs of each run")),
    ("--cpus-per-task", "cpus_per_task", dict(type=int, metavar="N", help="SLURM: CPU cores of each run")),
    ("--mem-gb", "mem_gb", dict(type=float, metavar="GB", help="SLURM: memory of each run")),
    ("--sbatch", "sbatch", dict(action="append", metavar="OPTION",
                                help="an extra sbatch option, repeatable: --sbatch=--qos=high")),
    ("--workers", "workers", dict(type=int, metavar="N", help="local: runs at once")),
    ("--gpus", "gpus", dict(metavar="LIST", help="local: GPU indices, one worker each, e.g. 0,1,2,3")),
    ("--sync-batchnorm", "sync_batchnorm", dict(action="store_true", default=None,
                                                help="data-parallel runs: SyncBatchNorm (CUDA only)")),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that select part of the grid or launch it elsewhere."""
    g = parser.add_argument_group("scaling out (docs/scaling.md)")
    g.add_argument("--shard", metavar="I/N", help="run part I of N of the grid (I from 0); without it, a "
                                                  "SLURM job array's variables choose the part")
    g.add_argument("--run-id", metavar="ID", help="run only this run of the grid (what launchers give a task)")
    g.add_argument("--json", action="store_true", help="with --dry-run: print the grid as JSON")
    g.add_argument("--launcher", choices=LAUNCHERS, help="slurm: submit the grid as a submitit job array; "
                                                          "local: several runs at once on this machine")
    for flag, dest, kw in _FLAGS:
        g.add_argument(flag, dest=f"launcher_{dest}", **kw)


def parse_minutes(value: Union[int, str, None], where: str = "launcher.time") -> Optional[int]:
    """SLURM's time formats -> whole minutes (rounded up)."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        if value is not None and value < 1:
            raise ConfigError(f"{where}: {value} minutes; give at least 1")
        return value
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ConfigError(f"{where}: {value!r} is not a time limit; use minutes (240) or [D-]HH:MM[:SS] "
                          f"('4:00:00', '1-12:00')")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is None and b is None:
        seconds = a * 60                                   # "MM"
    elif days is None and c is None:
        seconds = a * 60 + b                               # "MM:SS"
    else:
        hours, minutes, secs = a, b or 0, c or 0           # "HH:MM:SS", "D-HH[:MM[:SS]]"
        seconds = (days or 0) * 86400 + hours * 3600 + minutes * 60 + secs
    if seconds < 60:
        raise ConfigError(f"{where}: {value!r} is under a minute")
    return math.ceil(seconds / 60)


def parse_gpus(value: Union[str, List[int], None], where: str = "--gpus") -> Optional[List[int]]:
    if value is None:
        return None
    items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
    try:
        gpus = [int(v) for v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a list of GPU indices; write e.g. 0,1,2,3") from None
    if not gpus or min(gpus) < 0:
        raise ConfigError(f"{where}: {value!r}: give one GPU index (0 or more) per worker, e.g. 0,1,2,3")
    return gpus


def resolve(section: Dict[str, Any], args: Optional[argparse.Namespace] = None,
            source: str = "<config>") -> LauncherOptions:
    """The config's ``launcher:`` section with the command line's flags over it."""
    raw = dict(section or {})
    flag_given = set()
    if args is not None:
        for f in fields(LauncherOptions):
            value = getattr(args, f"launcher_{f.name}", None)
            if value is not None:
                flag_given.add(f.name)
                raw[f.name] = list(raw.get(f.name) or []) + value if f.name == "sbatch" else value
    # free-form values, checked here rather than by type
    time, gpus = raw.pop("time", None), raw.pop("gpus", None)
    opts = _build(LauncherOptions, raw, "launcher", _Ctx(source))
    opts.time = parse_minutes(time, "--time" if "time" in flag_given else f"{source}: launcher.time")
    opts.gpus = parse_gpus(gpus, "--gpus" if "gpus" in flag_given else f"{source}: launcher.gpus")
    for i, line in enumerate(opts.sbatch):
        line = re.sub(r"^#SBATCH\s+", "", str(line).strip())
        if not line.startswith("-"):
            raise ConfigError(f"{source}: launcher.sbatch[{i}]: {line!r} is not an sbatch option; "
                              f"write it as on the sbatch command line, e.g. '--qos=high'")
        opts.sbatch[i] = line
    return opts
