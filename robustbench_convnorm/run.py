"""The main command.

    python -m robustbench_convnorm.run CONFIG [--set key.path=value ...]
        [--dry-run [--json]] [--list] [--resume] [--force] [--eval-only] [--only TEXT]
        [--shard I/N | --run-id ID | --launcher slurm|local ...]
    torchrun --nproc_per_node=N -m robustbench_convnorm.run CONFIG   (data-parallel runs)

Expands the config into a grid of runs; for each: prepare data, build the
model, train (resuming when a checkpoint exists), evaluate, write the record.
A failed run is recorded as failed and the grid goes on; the leaderboard is
rebuilt from the records at the end (by the last worker, when workers share
the grid: docs/scaling.md).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import atomic, distributed, launch, speed
from .config import ConfigError, RunSpec, expand_grid, load_config, to_dict
from .lock import LOCK_FILE, LockLost, RunLocked, acquire, read_lock
from .data import DataError, list_sources, load_full, prepare_data
from .launch import merge
from .models import list_models
from .normalizers import list_normalizers
from .records import RECORD, new_record, read_record, write_json_atomic
from .registry import RegistryError

PER_EXAMPLE = "per_example.csv"
#: status of a run that another live worker holds (not written to any record)
LOCKED = "locked"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no CUDA GPU; use device: auto or cpu")
    return torch.device(name)


def _registries() -> Dict[str, List[str]]:
    import attacks
    from .training import METHODS

    return {"normalizers": list_normalizers(), "evaluators": attacks.list_evaluators(),
            "models": list_models(), "data sources": list_sources(), "training methods": METHODS.names()}


def preflight(specs: List[RunSpec], source: str) -> None:
    """Check every name and option the grid uses before any work starts."""
    import attacks
    from .builders import build_run_model
    from .data import SOURCES
    from .models import MODELS
    from .registry import check_options

    seen = set()
    for spec in specs:
        cfg = spec.config
        try:
            key = json.dumps([to_dict(cfg.normalizers[0]), cfg.model.arch, cfg.batchnorm, cfg.model.width],
                             sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                meta = {"num_classes": 10, "in_channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
                build_run_model(cfg, meta)
            check_options("data source", cfg.data.source, SOURCES.get(cfg.data.source), cfg.data.options)
            MODELS.get(cfg.model.arch)
            for ev in cfg.eval.evaluators:
                opts = {k: v for k, v in ev.items() if k != "type"}
                attacks.get_evaluator(ev["type"], **opts)
        except (RegistryError, TypeError, ValueError) as err:
            raise ConfigError(f"{source}: run {spec.run_id}: {err}") from None


class DataCache:
    """Each source is read once per process; runs differ only in their seed's split."""

    def __init__(self):
        self._full = {}

    def get(self, data_cfg, seed):
        key = json.dumps(to_dict(data_cfg) | {"augment": None, "train_fraction": None, "label_noise": None,
                                              "val_size": None}, sort_keys=True, default=str)
        if key not in self._full:
            self._full[key] = load_full(data_cfg)
        return prepare_data(data_cfg, seed, self._full[key])


def execute_run(spec: RunSpec, device: torch.device, data_cache: DataCache, *, force=False, resume=True,
                eval_only=False, log=print, owner: Optional[str] = None) -> Dict:
    """Train and evaluate one run; always leaves a record saying how it ended.
    The run's lock (lock.py) makes sure one worker alone works on it; a run
    held by a live worker is skipped (status ``locked``, nothing written)."""

    run_dir = spec.run_dir
    try:
        lock = distributed.acquire_lock(run_dir, owner=owner)  # lock.acquire; under DDP rank 0's
    except RunLocked as err:  # another worker trains it; its record will say how it ended
        log(f"[skip] {err}")
        return {"run_id": spec.run_id, "status": LOCKED, "holder": err.holder}
    try:
        if lock.took_over:
            log(f"  {lock.took_over}")
        atomic.remove_orphan_temps(run_dir)
        return _execute_locked(spec, device, data_cache, lock, force=force, resume=resume,
                               eval_only=eval_only, log=log)
    except LockLost as err:  # taken over while this worker stalled: the new holder writes
        log(f"[stopped] {err}")
        return {"run_id": spec.run_id, "status": LOCKED, "holder": read_lock(run_dir)}
    finally:
        lock.release()


def _execute_locked(spec: RunSpec, device, data_cache, lock, *, force, resume, eval_only, log) -> Dict:
    from .builders import build_run_model, model_meta
    from .checkpoints import load_checkpoint
    from .training import CHECKPOINT, train_run

    run_dir = spec.run_dir
    old = read_record(run_dir)
    if old and old.get("status") == "finished" and not force and not eval_only:
        log(f"[skip] {spec.run_id}: finished already (use --force to redo, --eval-only to re-evaluate)")
        return old
    if force and not eval_only and atomic.writes_enabled():  # (DDP: rank 0 alone)
        # everything but the lock this worker holds
        for path in run_dir.iterdir():
            if path.name != LOCK_FILE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    record = new_record(spec, str(device))
    if eval_only and old:
        record["timings"], record["params"] = old.get("timings", {}), old.get("params")
    write_json_atomic(record, run_dir / RECORD)

    def finish(status, error=None):
        lock.ensure_held()  # never overwrite the record of a worker that took the run over
        record["status"], record["error"] = status, error
        write_json_atomic(record, run_dir / RECORD)
        return record

    try:
        torch.manual_seed(spec.seed)
        data = data_cache.get(spec.config.data, spec.seed)
        record["data_note"] = data.note
        meta = model_meta(data)
        model = build_run_model(spec.config, meta).to(device)
        record["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        switches = speed.resolve(spec.config.speed, device, spec.normalizer.name)
        forward = speed.prepare_model(model, switches, log)
        record["speed"] = switches.as_dict()
        if eval_only:
            ckpt_path = run_dir / CHECKPOINT
            ckpt = load_checkpoint(ckpt_path, map_location=device) if ckpt_path.exists() else None
            if ckpt is None or not ckpt.get("finished"):
                return finish("failed", {"epoch": None, "reason": f"--eval-only needs a finished checkpoint at "
                                                                  f"{ckpt_path}; train the run first"})
            model.load_state_dict(ckpt["model"])
        else:
            result = train_run(spec, model, data, meta, device, run_dir, resume=resume, log=log,
                               forward=forward, optimizer_impl=switches.optimizer)
            record["timings"] = {"train_seconds": result.train_seconds,
                                 "train_seconds_per_epoch": result.seconds_per_epoch,
                                 "epochs_done": result.epochs_done}
            if result.status == "interrupted":  # Ctrl-C: record it, then stop the whole grid
                finish(result.status, result.error)
                raise KeyboardInterrupt
            if result.status != "finished":
                return finish(result.status, result.error)
        per_example = evaluate_into(record, model, data, spec, device, log, run_dir)
        lock.ensure_held()
        atomic.write_csv(run_dir / PER_EXAMPLE, per_example)
        return finish("finished")
    except KeyboardInterrupt:
        if record["status"] != "interrupted":
            finish("interrupted", {"epoch": None, "reason": "interrupted (Ctrl-C)"})
        raise
    except (DataError, ConfigError, RegistryError) as err:
        log(f"[failed] {spec.run_id}: {err}")
        return finish("failed", {"epoch": None, "reason": str(err)})
    except Exception as err:  # a failed run is recorded, and the grid goes on
        log(f"[failed] {spec.run_id}: {err.__class__.__name__}: {err}")
        return finish("failed", {"epoch": None, "reason": f"{err.__class__.__name__}: {err}",
                                 "traceback": traceback.format_exc(limit=8)})


def evaluate_into(record: Dict, model, data, spec: RunSpec, device, log, run_dir: Path):
    """Attacks, sanity checks and Lipschitz diagnostics into the record; returns
    the per-example outcomes (a DataFrame) for per_example.csv."""
    from attacks.protocol import evaluate

    cfg = spec.config
    model.eval()
    distributed.sync_model(model)  # DDP: every rank evaluates rank 0's model
    t0 = time.perf_counter()
    eval_cfg = to_dict(cfg.eval)
    eval_cfg.pop("lipschitz")  # ours, not the attack protocol's
    report = evaluate(model, data.test_x.to(device), data.test_y.to(device), eval_cfg, device=device, log=log,
                      **distributed.evaluate_kwargs(evaluate))  # DDP: sharded and gathered
    record["metrics"].update(report.metrics)
    record["flags"] = sorted(set(record["flags"]) | set(report.flags))
    record["evaluations"] = report.details
    record["timings"]["eval_seconds"] = time.perf_counter() - t0
    if cfg.eval.lipschitz and distributed.is_writer():  # DDP: rank 0 alone (it writes a plot)
        from .lipschitz import model_report, plot_layer_norms

        t0 = time.perf_counter()
        try:
            lip = model_report(model, tuple(data.image_shape))
            record["lipschitz"] = lip
            plot_layer_norms(lip, run_dir / "layer_norms.png", title=spec.run_id)
            for key in ("lip_product_log10", "mean_layer_spectral_norm"):
                if key in lip:
                    record["metrics"][key] = lip[key]
        except Exception as err:  # diagnostics must not sink a trained run
            record["flags"].append(f"lipschitz-error:{err.__class__.__name__}")
            log(f"  lipschitz diagnostics failed: {err}")
        record["timings"]["lipschitz_seconds"] = time.perf_counter() - t0
    shown = ", ".join(f"{k} {v:.2f}" for k, v in record["metrics"].items() if isinstance(v, float))
    log(f"  {shown}" + (f"  flags: {', '.join(record['flags'])}" if record["flags"] else ""))
    return report.per_example


def print_grid(specs: List[RunSpec], out=print) -> None:
    out(f"{len(specs)} run(s):")
    for s in specs:
        c = s.config
        extra = " ".join(f"{k}={v}" for k, v in s.axes.items())
        status = (read_record(s.run_dir) or {}).get("status", "new")
        out(f"  {s.run_id:<60} {c.train.method:<8} epochs={c.train.epochs} lr={c.train.lr:g} "
            f"bn={c.batchnorm} seed={s.seed} {extra} [{status}]")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m robustbench_convnorm.run", description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", help="a YAML config, e.g. configs/quickstart.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML value), repeatable: --set train.epochs=2")
    p.add_argument("--dry-run", action="store_true", help="validate the config and print the grid, train nothing")
    p.add_argument("--list", action="store_true", help="list normalizers, evaluators, models, data sources")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs (the default; kept explicit)")
    p.add_argument("--force", action="store_true", help="redo finished runs from scratch")
    p.add_argument("--eval-only", action="store_true", help="evaluate existing checkpoints, no training")
    p.add_argument("--only", metavar="TEXT", help="only runs whose id contains TEXT")
    launch.add_arguments(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for kind, names in _registries().items():
            print(f"{kind}: {', '.join(names)}")
        if not args.config:
            return 0
    if not args.config:
        print("error: give a config file, e.g. configs/quickstart.yaml (or --list)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        grid = expand_grid(cfg, source=args.config)
        if args.only:
            grid = [s for s in grid if args.only in s.run_id]
        opts = launch.resolve_options(cfg, args)      # the launcher: section with the flags over it
        specs, shard = launch.select_runs(grid, args)  # --run-id, --shard, a SLURM array's part, or all
        preflight(specs, args.config)
        device = resolve_device(cfg.device)
        if args.launcher and distributed.requested():
            raise ConfigError("--launcher under torchrun: launch without torchrun (launcher.tasks_per_node "
                              "makes each SLURM task data-parallel)")
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


def _run_specs(args, cfg, grid, specs, shard, device, ddp) -> int:
    cache, records = DataCache(), []
    where = f"shard {shard} of the grid ({shard.source}), " if shard is not None else ""
    if shard is not None and shard.source == "SLURM array":
        print(f"this SLURM array task runs part {shard} of the grid; --shard 0/1 runs all of it in each task")
    ranks = f" x {ddp.world_size} ranks ({ddp.backend})" if ddp else ""
    print(f"{len(specs)} run(s) on {device}{ranks}, {where}writing to {cfg.output_dir}")
    started = time.time()
    try:
        for i, spec in enumerate(specs, 1):
            print(f"[{i}/{len(specs)}] {spec.run_id}")
            # a run another worker failed while this one ran is not retried here: each run once per launch
            failed = None if args.force or args.eval_only else distributed.agree(merge.failed_since(spec, started))
            if failed:
                print(f"[skip] {spec.run_id}: another worker recorded it failed while this one ran; rerun to retry")
                records.append(failed)
                continue
            records.append(execute_run(spec, device, cache, force=args.force, eval_only=args.eval_only))
    except KeyboardInterrupt:
        print("\nstopped by Ctrl-C; finished runs are kept, rerun the same command to continue", file=sys.stderr)
        return 130
    finally:
        if distributed.is_writer():
            if shard is not None or args.run_id is not None:  # part of a grid: the last worker builds
                merge.build_if_complete(grid, cfg.output_dir)
            else:
                _leaderboard(cfg.output_dir)
    held = [r["run_id"] for r in records if r.get("status") == LOCKED]
    failed = [r["run_id"] for r in records if r.get("status") not in ("finished", LOCKED)]
    print(f"done: {len(records) - len(failed) - len(held)} finished, {len(failed)} not"
          + (f" ({', '.join(failed)})" if failed else "")
          + (f", {len(held)} held by other workers" if held else ""))
    return 1 if failed else 0


def _leaderboard(output_dir) -> None:
    """Rebuild the leaderboard (under the output's leaderboard lock; skipped
    when the records did not change since the last build)."""
    merge.build_once(output_dir)


if __name__ == "__main__":
    sys.exit(main())
