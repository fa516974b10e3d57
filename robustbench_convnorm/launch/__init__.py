"""Running a grid beyond one process, on existing engines (docs/scaling.md).

- ``shards``: --shard I/N and SLURM job arrays pick a deterministic, balanced
  part of the grid; --dry-run --json describes the grid for other tools.
- ``slurm``: --launcher slurm submits the grid as one submitit job array, one
  run per task; a preempted or timed-out task requeues and resumes.
- ``local``: --launcher local runs several runs at once on this machine, one
  GPU each (or a share of the CPU cores each).
- ``merge``: the last worker of a grid builds its leaderboard, once.
- ``options``: the config's ``launcher:`` section and the flags over it.

Every worker, whatever started it, is the same command on one run:
``python -m robustbench_convnorm.run CONFIG --set ... --run-id ID``; the
per-run lock (lock.py) keeps any mix of workers from training a run twice.
Data-parallel runs (torchrun) live in ``robustbench_convnorm.distributed``.
"""
from __future__ import annotations

import os
from typing import List, Mapping, Optional, Sequence, Tuple

from ..config import ConfigError, RunSpec
from .options import LAUNCHERS, LauncherOptions, add_arguments, resolve
from .shards import Shard, choose_shard, grid_json, select

__all__ = ["add_arguments", "resolve_options", "select_runs", "launch", "LauncherOptions", "Shard", "grid_json",
           "LAUNCHERS"]


def resolve_options(cfg, args) -> LauncherOptions:
    if getattr(args, "json", False) and not args.dry_run:
        raise ConfigError("--json describes the grid without running it: use it with --dry-run")
    if args.launcher is None:
        given = [f"--{k[len('launcher_'):].replace('_', '-')}" for k, v in vars(args).items()
                 if k.startswith("launcher_") and v is not None and k not in ("launcher_sync_batchnorm",)]
        if given:
            raise ConfigError(f"{', '.join(given)} only mean something with a launcher: add --launcher slurm "
                              f"or --launcher local")
    elif args.run_id is not None:
        raise ConfigError("--run-id runs one run here; a launcher runs the grid: drop one of them")
    return resolve(cfg.launcher, args, source=args.config)


def select_runs(grid: Sequence[RunSpec], args, env: Mapping[str, str] = os.environ
                ) -> Tuple[List[RunSpec], Optional[Shard]]:
    """The runs this process works on: --run-id's run, --shard's part, a SLURM
    array task's part (not under a launcher, which submits the grid), or all."""
    if args.run_id is not None:
        match = [s for s in grid if s.run_id == args.run_id]
        if not match:
            raise ConfigError(f"--run-id {args.run_id}: no such run in {args.config}'s grid with these --set "
                              f"overrides and --only (see --dry-run); did the config change since submission?")
        return match, None
    shard = choose_shard(args.shard, {} if args.launcher else env)
    return select(grid, shard), shard


def launch(kind: str, cfg, specs: Sequence[RunSpec], grid: Sequence[RunSpec], opts: LauncherOptions, *,
           args, device) -> int:
    """Hand ``specs`` to the chosen launcher; its exit status. ``args`` are the
    command line's (config, overrides, and the flags each worker repeats)."""
    if kind == "slurm":
        try:
            from .slurm import submit
        except ImportError as err:
            raise ConfigError(str(err)) from None

        return submit(cfg, specs, grid, opts, args=args, device=device)
    from .local import run_local

    return run_local(cfg, specs, grid, opts, args=args, device=device)
