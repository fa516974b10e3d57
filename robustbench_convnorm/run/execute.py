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
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import atomic, distributed, launch, speed
from .config import ConfigError, ConfigWarning, RunSpec, expand_grid, load_config, to_dict
from .checkpoints import CheckpointError
from .lock import LOCK_FILE, LockLost, RunLocked, read_lock, worker_identity
from .data import DataError, list_sources, load_full, prepare_data
from .launch import merge
from .models import list_models
from .normalizers import list_normalizers
from .records import RECORD, environment, new_record, read_record, write_json_atomic
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
            _check_evaluators(cfg.eval.evaluators)
        except (RegistryError, TypeError, ValueError) as err:
            raise ConfigError(f"{source}: run {spec.run_id}: {err}") from None


def _check_evaluators(evaluators) -> None:
    """Each evaluator builds from its options, and no two share a result name
    (their columns and metrics would collide after training)."""
    import attacks

    named: Dict[str, int] = {}
    kinds = set()
    for i, ev in enumerate(evaluators):
        opts = {k: v for k, v in ev.items() if k != "type"}
        built = attacks.get_evaluator(ev["type"], **opts)
        if built.name in named:
            raise ConfigError(f"eval.evaluators[{named[built.name]}] and eval.evaluators[{i}] both give results "
                              f"named {built.name!r}; give one of them another `name:`, or list it once")
        named[built.name] = i
        kinds.add(built.kind)
    clean = attacks.get_evaluator("clean").name
    if "clean" not in kinds and clean in named:  # the protocol adds a clean evaluator of that name
        raise ConfigError(f"eval.evaluators[{named[clean]}] is named {clean!r}, the name of the clean "
                          f"evaluator the protocol adds; rename it")


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
                               eval_only=eval_only, log=log, owner=owner)
    except LockLost as err:  # taken over while this worker stalled: the new holder writes
        log(f"[stopped] {err}")
        return {"run_id": spec.run_id, "status": LOCKED, "holder": read_lock(run_dir)}
    finally:
        lock.release()


#: errors whose message says everything (no class name, no traceback in the record)
_PLAIN_ERRORS = (DataError, ConfigError, RegistryError, CheckpointError)
_DEFAULT_THREADS = torch.get_num_threads()


def apply_threads(cfg) -> None:
    """``threads`` of the config (null: torch's default for this process);
    the thread count changes the last digits of CPU results."""
    torch.set_num_threads(cfg.threads if cfg.threads is not None else _DEFAULT_THREADS)


def _failure(err: BaseException) -> Dict:
    if isinstance(err, _PLAIN_ERRORS):
        return {"epoch": None, "reason": str(err)}
    return {"epoch": None, "reason": f"{err.__class__.__name__}: {err}", "traceback": traceback.format_exc(limit=8)}


def _prepare_model(spec: RunSpec, device, data_cache, record, log):
    """The run's data and model (on the device, fast path applied), noted in the record."""
    from .builders import build_run_model, model_meta

    torch.manual_seed(spec.seed)
    data = data_cache.get(spec.config.data, spec.seed)
    record["data_note"] = data.note
    meta = model_meta(data)
    model = build_run_model(spec.config, meta).to(device)
    record["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    switches = speed.resolve(spec.config.speed, device, spec.normalizer.name)
    forward = speed.prepare_model(model, switches, log)
    record["speed"] = switches.as_dict()
    record["environment"] = environment(device)
    return data, meta, model, forward, switches


def _execute_locked(spec: RunSpec, device, data_cache, lock, *, force, resume, eval_only, log,
                    owner=None) -> Dict:
    from .training import train_run

    run_dir = spec.run_dir
    old = read_record(run_dir)
    if old and old.get("status") == "finished" and not force and not eval_only:
        log(f"[skip] {spec.run_id}: finished already (use --force to redo, --eval-only to re-evaluate)")
        return old
    apply_threads(spec.config)
    record = new_record(spec, str(device))
    record["worker"] = worker_identity(owner)
    if eval_only:
        return _evaluate_only(spec, device, data_cache, lock, record, old, log)
    if force and atomic.writes_enabled():  # (DDP: rank 0 alone)
        # everything but the lock this worker holds
        for path in run_dir.iterdir():
            if path.name != LOCK_FILE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    write_json_atomic(record, run_dir / RECORD)

    def finish(status, error=None):
        lock.ensure_held()  # never overwrite the record of a worker that took the run over
        record["status"], record["error"] = status, error
        if status == "failed":
            log(f"[failed] {spec.run_id}: {error['reason']}")
        write_json_atomic(record, run_dir / RECORD)
        return record

    try:
        data, meta, model, forward, switches = _prepare_model(spec, device, data_cache, record, log)
        result = train_run(spec, model, data, meta, device, run_dir, resume=resume, log=log,
                           forward=forward, optimizer_impl=switches.optimizer, guard=lock.ensure_held)
        record["timings"] = {"train_seconds": result.train_seconds,
                             "train_seconds_per_epoch": result.seconds_per_epoch,
                             "epochs_done": result.epochs_done}
        record["checkpoint_notes"] = result.notes
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
    except LockLost:
        raise
    except Exception as err:  # a failed run is recorded, and the grid goes on
        return finish("failed", _failure(err))


def _evaluate_only(spec: RunSpec, device, data_cache, lock, record, old, log) -> Dict:
    """--eval-only: evaluate the finished checkpoint into a new record held in
    memory; record.json and per_example.csv are replaced only once it is
    complete. On failure or Ctrl-C the record on disk stays as it was (a
    failed record is written only where there was none)."""
    from .checkpoints import check_run_config
    from .training import CHECKPOINT

    run_dir = spec.run_dir
    if old:
        record["timings"], record["params"] = dict(old.get("timings") or {}), old.get("params")

    def give_up(status, error):
        record["status"], record["error"] = status, error
        kept = f"; its record ({old.get('status')}) is unchanged" if old else ""
        log(f"[{status}] {spec.run_id}: --eval-only: {error['reason']}{kept}")
        if old:
            return {"run_id": spec.run_id, "status": status, "error": error, "record_kept": True}
        lock.ensure_held()
        write_json_atomic(record, run_dir / RECORD)
        return record

    try:
        data, meta, model, forward, switches = _prepare_model(spec, device, data_cache, record, log)
        ckpt_path = run_dir / CHECKPOINT
        ckpt, used, record["checkpoint_notes"] = distributed.load_latest(ckpt_path, map_location=device, log=log)
        if ckpt is None or not ckpt.get("finished"):
            have = (f"its newest good checkpoint ({used.name}) is of epoch {ckpt['epoch']}, not finished"
                    if ckpt is not None else f"there is no good checkpoint at {ckpt_path}")
            return give_up("failed", {"epoch": None, "reason": f"{have}; --eval-only evaluates trained runs: "
                                                               f"train the run first (without --eval-only)"})
        check_run_config(ckpt, spec.config, used)
        model.load_state_dict(ckpt["model"])
        per_example = evaluate_into(record, model, data, spec, device, log, run_dir)
        lock.ensure_held()
        atomic.write_csv(run_dir / PER_EXAMPLE, per_example)
        record["status"] = "finished"
        write_json_atomic(record, run_dir / RECORD)
        return record
    except KeyboardInterrupt:
        give_up("interrupted", {"epoch": None, "reason": "interrupted (Ctrl-C) during the evaluation"})
        raise
    except LockLost:
        raise
    except Exception as err:
        return give_up("failed", _failure(err))


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
            for warning in lip.get("warnings") or []:
                log(f"  lipschitz: {warning}")
            model_name = record["normalizer"] + ("+BN" if record.get("batchnorm") else "")
            plot_layer_norms(lip, run_dir / "layer_norms.png",
                             title=f"{model_name} ({record['arch']}), seed {spec.seed}")
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
    try:
        return _main(argv)
    except KeyboardInterrupt:  # outside a run (config, preflight, summary): nothing to save
        print("\nstopped by Ctrl-C", file=sys.stderr)
        return 130


def _main(argv=None) -> int:
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
        with config_warnings():
            cfg = load_config(args.config, args.overrides)
            grid = expand_grid(cfg, source=args.config)
        if args.only:
            grid = select_only(grid, args.only, args.config)
        opts = launch.resolve_options(cfg, args)      # the launcher: section with the flags over it
        specs, shard = launch.select_runs(grid, args)  # --run-id, --shard, a SLURM array's part, or all
        preflight(specs, args.config)
        device = resolve_device(cfg.device)
        check_output_dir(cfg.output_dir, create=not args.dry_run)
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
    stopped, built = False, True
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
        stopped = True
        print("\nstopped by Ctrl-C; finished runs are kept, rerun the same command to continue", file=sys.stderr)
    finally:
        if distributed.is_writer():
            # part of a grid (a shard, a launcher's task): the last worker builds it
            built = _leaderboard(cfg.output_dir, grid if shard is not None or args.run_id is not None else None)
    if stopped or not built:
        return 130
    return summarize(records)


def summarize(records: List[Dict], out=print) -> int:
    """The closing lines: counts, and why each run that did not finish stopped.
    The exit status: 0 all finished (or held by other workers), 1 otherwise."""
    held = [r["run_id"] for r in records if r.get("status") == LOCKED]
    failed = [r for r in records if r.get("status") not in ("finished", LOCKED)]
    out(f"done: {len(records) - len(failed) - len(held)} finished, {len(failed)} not"
        + (f" ({', '.join(r['run_id'] for r in failed)})" if failed else "")
        + (f", {len(held)} held by other workers" if held else ""))
    for r in failed:
        reason = ((r.get("error") or {}).get("reason") or "no reason recorded").strip().splitlines()[0]
        kept = " (its earlier record is kept)" if r.get("record_kept") else ""
        out(f"  {r.get('status')}: {r['run_id']}: {reason}{kept}")
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


def select_only(specs: List[RunSpec], text: str, source: str) -> List[RunSpec]:
    """--only TEXT: the runs whose id contains TEXT; none is an error."""
    chosen = [s for s in specs if text in s.run_id]
    if not chosen:
        example = f" (ids look like {specs[0].run_id})" if specs else ""
        raise ConfigError(f"{source}: --only {text!r} matches none of the {len(specs)} run ids{example}; "
                          f"--dry-run lists them")
    return chosen


def check_output_dir(output_dir, create: bool = True) -> None:
    """Refuse an output_dir that cannot be written, before any work. With
    ``create`` the directory is made and a probe file written and removed;
    without (--dry-run) nothing is created."""
    path = Path(output_dir)
    fix = "set output_dir in the config (or --set output_dir=DIR) to a writable directory"
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise ConfigError(f"output_dir {path}: {ancestor} is a file, not a directory; {fix}")
    if not create:
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise ConfigError(f"output_dir {path}: {ancestor} is not writable; {fix}")
        return
    try:
        (path / "runs").mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path / "runs", prefix=".write-probe-"):
            pass
    except OSError as err:
        raise ConfigError(f"output_dir {path} cannot be written ({err.__class__.__name__}: "
                          f"{err.strerror or err}); {fix}") from None


def _leaderboard(output_dir, grid: Optional[List[RunSpec]] = None) -> bool:
    """Rebuild the tables under the output's leaderboard lock (launch/merge.py;
    skipped when the records did not change since the last build). With
    ``grid``, only once every run of it has ended. False when Ctrl-C stopped
    it (the records are complete; the tables can be rebuilt later)."""
    try:
        if grid is None:
            merge.build_once(output_dir)
        else:
            merge.build_if_complete(grid, output_dir)
    except KeyboardInterrupt:
        print(f"\nleaderboard build stopped by Ctrl-C; the records are complete: rebuild the tables with "
              f"python -m robustbench_convnorm.leaderboard {output_dir}", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
