"""One run from start to end: lock, data, model, training (resuming when a
checkpoint exists), evaluation, record. --eval-only evaluates a finished
checkpoint into a new record. Whatever happens, the record says how the run
ended; everything the run says is also kept in its run.log (logs.py)."""
from __future__ import annotations

import json
import shutil
import traceback
from typing import Callable, Dict, Optional

import pandas as pd
import torch

from .. import atomic, cost, distributed, logs, speed
from ..checkpoints import CheckpointError
from ..config import ConfigError, RunSpec, to_dict
from ..data import DataError, expand_root, load_full, prepare_data
from ..lock import LOCK_FILE, LockLost, RunLocked, read_lock, worker_identity
from ..records import LOCKED, RECORD, environment, inspect_record, new_record, trainable_params, write_json_atomic
from ..registry import RegistryError
from .evaluation import evaluate_into, kept_evaluations, merge_kept

__all__ = ["PER_EXAMPLE", "LOCKED", "DataCache", "execute_run", "apply_threads"]

PER_EXAMPLE = "per_example.csv"
#: status of a run that another live worker holds (not written to any record)
#: files of a run dir that --force keeps: the lock this worker holds, and the log of earlier sessions
_KEPT_BY_FORCE = (LOCK_FILE, logs.RUN_LOG)
_log = logs.get_logger("run")


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
                eval_only=False, log: Optional[Callable[[str], object]] = None, owner: Optional[str] = None,
                replace_evaluations: bool = False) -> Dict:
    """Train and evaluate one run; always leaves a record saying how it ended.
    The run's lock (lock.py) makes sure one worker alone works on it; a run
    held by a live worker is skipped (status ``locked``, nothing written).
    Messages go to the ``robustbench_convnorm.run`` logger (and to ``log``
    when given); while the lock is held, to the run's run.log too. A run
    skipped as finished returns its record with ``skipped`` set. ``--eval-only``
    keeps the earlier evaluators that ``eval.evaluators`` does not list
    (run/evaluation.py, merge_kept) unless ``replace_evaluations``."""
    say = logs.teller(_log, log)
    run_dir = spec.run_dir
    try:
        lock = distributed.acquire_lock(run_dir, owner=owner)  # lock.acquire; under DDP rank 0's
    except RunLocked as err:  # another worker trains it; its record will say how it ended
        say(f"[skip] {err}")
        return {"run_id": spec.run_id, "status": LOCKED, "holder": err.holder}
    try:
        if lock.took_over:
            say(f"  {lock.took_over}")
        atomic.remove_orphan_temps(run_dir)
        what = "--eval-only" if eval_only else ("--force" if force else "train and evaluate")
        header = f"{spec.run_id}: {what} ({logs.describe_worker(worker_identity(owner))})"
        with logs.run_log(run_dir, header):
            return _execute_locked(spec, device, data_cache, lock, force=force, resume=resume,
                                   eval_only=eval_only, log=say, owner=owner,
                                   replace_evaluations=replace_evaluations)
    except LockLost as err:  # taken over while this worker stalled: the new holder writes
        say(f"[stopped] {err}")
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


def failure(err: BaseException) -> Dict:
    """The record's ``error`` for an exception: the message alone for errors
    that say everything, else the class and a short traceback."""
    if isinstance(err, _PLAIN_ERRORS):
        return {"epoch": None, "reason": str(err)}
    return {"epoch": None, "reason": f"{err.__class__.__name__}: {err}", "traceback": traceback.format_exc(limit=8)}


def _prepare_model(spec: RunSpec, device, data_cache, record, log):
    """The run's data and model (on the device, fast path applied), noted in the record."""
    from ..builders import build_run_model, model_meta

    torch.manual_seed(spec.seed)
    data = data_cache.get(spec.config.data, spec.seed)
    record["data_note"] = data.note
    record["data_root"] = expand_root(spec.config.data.root)  # the config keeps ${ROBUSTBENCH_DATA...} as written
    meta = model_meta(data)
    model = build_run_model(spec.config, meta).to(device)
    record["params"] = trainable_params(model)
    switches = speed.for_model(speed.resolve(spec.config.speed, device, spec.normalizer.name), model, device, log)
    forward = speed.prepare_model(model, switches, log)
    record["speed"] = switches.as_dict()
    record["environment"] = environment(device)
    return data, meta, model, forward, switches


def _plot_title(record: Dict, spec: RunSpec) -> str:
    model_name = record["normalizer"] + ("+BN" if record.get("batchnorm") else "")
    return f"{model_name} ({record['arch']}), seed {spec.seed}"


def _execute_locked(spec: RunSpec, device, data_cache, lock, *, force, resume, eval_only, log,
                    owner=None, replace_evaluations=False) -> Dict:
    from ..training import train_run

    run_dir = spec.run_dir
    old, problem = inspect_record(run_dir)
    if problem:  # never taken for the run's outcome: the run is redone (resumed from its checkpoint)
        log(f"[warning] {spec.run_id}: {problem}; it does not count as this run's outcome and is replaced")
    damaged = None
    if old and old.get("status") == "finished" and not force:
        # results backed by a damaged final checkpoint: resume from the previous good one, re-evaluate
        from ..checkpoints import final_checkpoint_problem
        from ..training import CHECKPOINT

        damaged = distributed.agree(final_checkpoint_problem(run_dir / CHECKPOINT))
        if damaged:
            log(f"[warning] {spec.run_id}: finished, but {damaged}: resuming from the previous good "
                f"checkpoint to the end, then re-evaluating")
        elif not eval_only:
            log(f"[skip] {spec.run_id}: finished already (use --force to redo, --eval-only to re-evaluate)")
            return dict(old, run_id=spec.run_id, skipped="finished already")
    apply_threads(spec.config)
    record = new_record(spec, str(device))
    record["worker"] = worker_identity(owner)
    if eval_only and not damaged:
        return _evaluate_only(spec, device, data_cache, lock, record, old, log, replace_evaluations)
    if force and atomic.writes_enabled():  # (DDP: rank 0 alone)
        for path in run_dir.iterdir():
            if path.name not in _KEPT_BY_FORCE:
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
        scope = cost.reset_peak_memory(device)
        result = train_run(spec, model, data, meta, device, run_dir, resume=resume, log=log,
                           forward=forward, optimizer_impl=switches.optimizer, guard=lock.ensure_held)
        record["timings"] = {"train_seconds": result.train_seconds,
                             "train_seconds_per_epoch": result.seconds_per_epoch,
                             "epochs_done": result.epochs_done}
        record["checkpoint_notes"] = result.notes
        record["cost"] = cost.training_cost(result, record.get("params"), device, cost.peak_memory_mb(device), scope)
        if result.plan is not None:  # train.budget: what it bought, what was used, how to replay it
            record["budget"] = dict(result.plan.as_dict(), used_seconds=result.train_seconds,
                                    replay=result.plan.replay_sets())
        record["flags"], record["training"] = list(result.flags), result.training  # overfitting, selection, EMA
        if result.status == "interrupted":  # Ctrl-C: record it, then stop the whole grid
            finish(result.status, result.error)
            raise KeyboardInterrupt
        if result.status != "finished":
            return finish(result.status, result.error)
        per_example = evaluate_into(record, model, data, spec.config, device, log, run_dir,
                                    title=_plot_title(record, spec))
        record["cost"]["eval_seconds"] = cost.eval_seconds(record.get("evaluations") or {})
        lock.ensure_held()
        atomic.write_csv(run_dir / PER_EXAMPLE, per_example)
        _tensorboard(spec, record)
        return finish("finished")
    except KeyboardInterrupt:
        if record["status"] != "interrupted":
            finish("interrupted", {"epoch": None, "reason": "interrupted (Ctrl-C)"})
        raise
    except LockLost:
        raise
    except Exception as err:  # a failed run is recorded, and the grid goes on
        return finish("failed", failure(err))


def _tensorboard(spec: RunSpec, record: Dict) -> None:
    """logging.tensorboard: the evaluation's numbers as event files (nothing when off)."""
    from ..tensorboard import log_record

    log_record(spec.config, spec.run_dir, record)


def _evaluate_only(spec: RunSpec, device, data_cache, lock, record, old, log, replace_evaluations=False) -> Dict:
    """--eval-only: evaluate the finished checkpoint into a new record held in
    memory; record.json and per_example.csv are replaced only once it is
    complete. The earlier record's evaluators that the config no longer lists
    are kept, outcomes and all, and the worst case is recomputed over every
    evaluator (run/evaluation.py, merge_kept); ``replace_evaluations`` drops
    them. On failure or Ctrl-C the record on disk stays as it was (a failed
    record is written only where there was none)."""
    from ..checkpoints import check_run_config
    from ..training import CHECKPOINT

    run_dir = spec.run_dir
    if old:
        record["timings"], record["params"] = dict(old.get("timings") or {}), old.get("params")
        record["cost"] = dict(old.get("cost") or {})
        record["flags"] = [f for f in old.get("flags") or [] if f.startswith("train:")]  # training's own flags
        record["training"] = old.get("training")
    # per_example.csv is replaced just before record.json; should the record's write then
    # fail, the old file goes back, so the kept record never sits beside another evaluation's outcomes
    per_example_path = run_dir / PER_EXAMPLE
    replaced: Dict[str, Optional[bytes]] = {}

    def give_up(status, error):
        record["status"], record["error"] = status, error
        kept = f"; its record ({old.get('status')}) is unchanged" if old else ""
        log(f"[{status}] {spec.run_id}: --eval-only: {error['reason']}{kept}")
        if "old" in replaced:
            if replaced["old"] is None:
                per_example_path.unlink(missing_ok=True)
            else:
                atomic.write_bytes(per_example_path, replaced["old"])
        if old:
            return {"run_id": spec.run_id, "status": status, "error": error, "record_kept": True}
        lock.ensure_held()
        write_json_atomic(record, run_dir / RECORD)
        return record

    try:
        kept = [] if replace_evaluations else kept_evaluations(old, spec.config)
        old_table = pd.read_csv(per_example_path) if kept and per_example_path.exists() else None
        if kept and old_table is None:
            raise ValueError(f"{per_example_path} is missing, so the outcomes of the kept evaluator(s) "
                             f"{', '.join(kept)} are lost: re-run every evaluator (--replace-evaluations)")
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
        per_example = evaluate_into(record, model, data, spec.config, device, log, run_dir,
                                    title=_plot_title(record, spec))
        if kept:
            per_example = merge_kept(record, per_example, old, old_table, kept, spec.config)
            log(f"  kept the earlier evaluation(s) {', '.join(kept)} (--replace-evaluations drops them); "
                f"worst_case_acc {record['metrics']['worst_case_acc']:.2f} over all of them")
        record.setdefault("cost", {})["eval_seconds"] = cost.eval_seconds(record.get("evaluations") or {})
        lock.ensure_held()
        replaced["old"] = per_example_path.read_bytes() if per_example_path.exists() else None
        atomic.write_csv(per_example_path, per_example)
        _tensorboard(spec, record)
        record["status"] = "finished"
        write_json_atomic(record, run_dir / RECORD)
        return record
    except KeyboardInterrupt:
        give_up("interrupted", {"epoch": None, "reason": "interrupted (Ctrl-C) during the evaluation"})
        raise
    except LockLost:
        raise
    except Exception as err:
        return give_up("failed", failure(err))
