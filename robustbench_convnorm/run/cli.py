"""The command line of ``python -m robustbench_convnorm.run`` (and of
``robustbench-convnorm run``): arguments, the checks before any work, the
loop over the grid with its progress lines, the closing summary."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

from .. import distributed, launch, logs, reproducible
from ..config import ConfigError, ConfigWarning, RunSpec, expand_grid, load_config
from ..launch import merge
from ..launch.worker import done_line
from ..progress import GridProgress
from .execute import LOCKED, DataCache, execute_run
from .grid import check_data, check_output_dir, preflight, print_grid, resolve_device, select_only
from .listing import list_text

__all__ = ["main", "parse_args", "summarize", "config_warnings"]

PROG = "python -m robustbench_convnorm.run"
USAGE = """Train and evaluate a grid of runs.

    python -m robustbench_convnorm.run CONFIG [--set key.path=value ...]
        [--dry-run [--json]] [--list [NAME]] [--resume] [--force] [--eval-only [--replace-evaluations]]
        [--only TEXT]
        [--shard I/N | --run-id ID | --launcher slurm|local ...]
    torchrun --nproc_per_node=N -m robustbench_convnorm.run CONFIG   (data-parallel runs)

Expands the config into a grid of runs; for each: prepare data, build the
model, train (resuming when a checkpoint exists), evaluate, write the record
and run.log. A failed run is recorded as failed and the grid goes on; the
leaderboard is rebuilt from the records at the end (by the last worker, when
workers share the grid: docs/scaling.md).

--reproducible off|avx2|strict (anywhere on the command line) pins the CPU's
kernel paths as the config's `reproducible:` does (README, "Reproducible CPU
mode")."""
_log = logs.get_logger("run")


def parse_args(argv=None, prog: str = PROG):
    p = argparse.ArgumentParser(prog=prog, description=USAGE.split("\n\n")[0],
                                epilog=USAGE.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="a YAML config, e.g. configs/quickstart.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML value), repeatable: --set train.epochs=2")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config, check the data is there, print the grid; train nothing")
    p.add_argument("--list", nargs="?", const="", default=None, metavar="NAME",
                   help="list the normalizers, evaluators, models, data sources and training methods with "
                        "their options and defaults; NAME narrows it to one kind or one entry")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs (the default; kept explicit)")
    p.add_argument("--force", action="store_true", help="redo finished runs from scratch")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate existing checkpoints, no training; earlier evaluators the config no longer "
                        "lists are kept (the worst case covers them all)")
    p.add_argument("--replace-evaluations", action="store_true",
                   help="with --eval-only: drop the earlier evaluations; the record holds this list alone")
    p.add_argument("--only", metavar="TEXT", help="only runs whose id contains TEXT")
    launch.add_arguments(p)
    args = p.parse_args(argv)
    if args.replace_evaluations and not args.eval_only:
        p.error("--replace-evaluations goes with --eval-only (it says what happens to the earlier evaluations)")
    if args.list and args.config is None and _looks_like_config(args.list):
        args.config, args.list = args.list, ""  # `--list configs/x.yaml`: the config, listed after the registries
    return args


def _looks_like_config(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or Path(text).is_file()


def main(argv=None, prog: str = PROG) -> int:
    with logs.console():
        try:
            return _main(argv, prog)
        except KeyboardInterrupt:  # outside a run (config, preflight, summary): nothing to save
            print("\nstopped by Ctrl-C", file=sys.stderr)
            return 130


def _main(argv, prog) -> int:
    args = parse_args(argv, prog)
    if args.list is not None:
        try:
            print(list_text(args.list or None))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if not args.config:
            return 0
    if not args.config:
        print("error: give a config file, e.g. configs/quickstart.yaml (or --list)", file=sys.stderr)
        return 2
    try:
        with config_warnings():
            cfg = load_config(args.config, args.overrides)
            grid = expand_grid(cfg, source=args.config)
        _reproducible_mode(cfg, check_only=args.dry_run)
        opts = launch.resolve_options(cfg, args)      # the launcher: section with the flags over it
        # a data-parallel run is another run than the one-process one: its own id (docs/scaling.md)
        distributed.tag_run_ids(grid, distributed.planned_world_size(args.launcher, opts.tasks_per_node))
        if args.only:
            grid = select_only(grid, args.only, args.config)
        specs, shard = launch.select_runs(grid, args)  # --run-id, --shard, a SLURM array's part, or all
        preflight(specs, args.config)
        device = resolve_device(cfg.device)
        if args.launcher and distributed.requested():
            raise ConfigError("--launcher under torchrun: launch without torchrun (launcher.tasks_per_node "
                              "makes each SLURM task data-parallel)")
        data_lines = _data_check(specs, args)
        check_output_dir(cfg.output_dir, create=not args.dry_run)  # last: a refused config creates nothing
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.dry_run and args.json:
        print(json.dumps(launch.grid_json(grid, shard, config=args.config, overrides=args.overrides,
                                          device=str(device)), indent=2, default=str))
        return 0
    if args.dry_run:
        if shard is not None:
            print(f"shard {shard} ({shard.source}): {len(specs)} of {len(grid)} run(s)")
        print_grid(specs)
        for line in data_lines:
            print(f"data: {line}")
        print(f"device: {device}; output: {Path(cfg.output_dir) / 'runs'}")
        if not args.launcher:
            return 0
    if args.launcher:
        try:
            return launch.launch(args.launcher, cfg, specs, grid, opts, args=args, device=device)
        except ConfigError as err:
            print(f"config error: {err}", file=sys.stderr)
            return 2
    try:
        ddp = distributed.setup(device, sync_batchnorm=opts.sync_batchnorm)  # under torchrun only
    except ValueError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    try:
        return _run_specs(args, cfg, grid, specs, shard, ddp.device if ddp else device, ddp)
    finally:
        distributed.teardown()


def _reproducible_mode(cfg, *, check_only: bool = False) -> None:
    """The config's (or the environment's) reproducible mode, in effect before
    any work: set, or the command started again with it (reproducible.py).
    A dry run computes nothing: it checks the mode's name and leaves the
    process as it is (the run, or each launched worker, puts it in effect)."""
    try:
        mode = reproducible.requested(cfg.reproducible)
        if not check_only:
            reproducible.ensure(mode)
    except (ValueError, reproducible.ReproducibleModeError) as err:
        raise ConfigError(f"reproducible: {err}") from None


def _data_check(specs: List[RunSpec], args) -> List[str]:
    """Missing data stops the command before any training, with one message
    (ConfigError). SLURM jobs may see other disks than the submitting host:
    there a miss is a warning and the jobs go."""
    try:
        return check_data(specs, args.config)
    except ConfigError as err:
        if args.launcher != "slurm":
            raise
        print(f"warning: {err} (on this host; the SLURM jobs will fail unless their nodes see it)",
              file=sys.stderr)
        return []


def _run_specs(args, cfg, grid, specs, shard, device, ddp) -> int:
    cache, records = DataCache(), []
    where = f"shard {shard} of the grid ({shard.source}), " if shard is not None else ""
    if shard is not None and shard.source == "SLURM array":
        _log.info(f"this SLURM array task runs part {shard} of the grid; --shard 0/1 runs all of it in each task")
    ranks = f" x {ddp.world_size} ranks ({ddp.backend})" if ddp else ""
    _log.info(f"{len(specs)} run(s) on {device}{ranks}, {where}writing to {cfg.output_dir}")
    stopped, built = False, True
    started = time.time()
    # each run's planned epochs: the grid's time left follows the epochs trained (none under --eval-only)
    progress = GridProgress(len(specs), epochs=[0 if args.eval_only else s.config.train.epochs for s in specs])
    try:
        for i, spec in enumerate(specs, 1):
            _log.info(progress.line(i, spec.run_id))
            # a run another worker failed while this one ran is not retried here: each run once per launch
            failed = None if args.force or args.eval_only else distributed.agree(merge.failed_since(spec, started))
            if failed:
                _log.info(f"[skip] {spec.run_id}: another worker recorded it failed while this one ran; "
                          f"rerun to retry")
                records.append(failed)
                continue
            t0 = time.monotonic()
            outcome = execute_run(spec, device, cache, force=args.force, eval_only=args.eval_only,
                                  replace_evaluations=args.replace_evaluations)
            if outcome.get("status") != LOCKED and not outcome.get("skipped"):
                progress.ran(time.monotonic() - t0)
            records.append(outcome)
    except KeyboardInterrupt:
        stopped = True
        print("\nstopped by Ctrl-C; finished runs are kept, rerun the same command to continue", file=sys.stderr)
    finally:
        if distributed.is_writer():
            # part of a grid (a shard, a launcher's task): the last worker builds it
            built = _leaderboard(cfg.output_dir, grid if shard is not None or args.run_id is not None else None)
    if stopped or not built:
        return 130
    return summarize(records, out=_log.info)


def summarize(records: List[Dict], out=print) -> int:
    """The closing lines: counts, and why each run that did not finish stopped.
    The exit status: 0 all finished (or held by other workers), 1 otherwise."""
    line, not_finished = done_line({str(r.get("run_id")): r.get("status") for r in records})
    out(line)
    failed = [r for r in records if str(r.get("run_id")) in not_finished]
    for r in failed:
        error = r.get("error") if isinstance(r.get("error"), dict) else {}
        reason = str(error.get("reason") or "no reason recorded").strip().splitlines() or ["no reason recorded"]
        kept = " (its earlier record is kept)" if r.get("record_kept") else ""
        out(f"  {r.get('status')}: {r.get('run_id')}: {reason[0]}{kept}")
    return 1 if failed else 0


@contextlib.contextmanager
def config_warnings():
    """Print each config warning (config.ConfigWarning) once, as one line,
    however many runs of the grid repeat it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        try:
            yield
        finally:
            for msg in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, ConfigWarning)):
                print(f"config warning: {msg}", file=sys.stderr)


def _leaderboard(output_dir, grid: Optional[List[RunSpec]] = None) -> bool:
    """Rebuild the tables under the output's leaderboard lock (launch/merge.py;
    skipped when the records did not change since the last build). With
    ``grid``, only once every run of it has ended. False when Ctrl-C stopped
    it (the records are complete; the tables can be rebuilt later)."""
    try:
        if grid is None:
            merge.build_once(output_dir, log=_log.info)
        else:
            merge.build_if_complete(grid, output_dir, log=_log.info)
    except KeyboardInterrupt:
        print(f"\nleaderboard build stopped by Ctrl-C; the records are complete: rebuild the tables with "
              f"python -m robustbench_convnorm.leaderboard {output_dir}", file=sys.stderr)
        return False
    return True
