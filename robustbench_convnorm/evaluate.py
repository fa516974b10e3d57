"""Any model in: evaluate an outside model as the harness evaluates its own.

    python -m robustbench_convnorm.evaluate --model package.module:factory
        [--checkpoint PATH] [--name NAME] [--set key.path=value ...] CONFIG
    robustbench-convnorm evaluate --model package.module:factory ... CONFIG

``factory()`` returns an ``nn.Module`` taking images in [0, 1] (N, C, H, W)
and returning logits; ``--checkpoint`` loads a state dict into it. The
config gives the data (its test split), the evaluators, the sanity checks
and the Lipschitz report (its ``eval`` section), the device and the
output_dir; its training sections are not used. The model is evaluated on
the same path as trained runs (run/evaluation.py) and gets a normal record,
per_example.csv and run.log in ``<output_dir>/runs/<run_id>``, then the
leaderboard is rebuilt, so it is ranked beside the trained models.

The run id is ``<dataset>-external-<name>-<hash>``, the hash covering the
model spec, the checkpoint's SHA-256 and the data section: evaluating the
same model again replaces its record. In the leaderboard it is the model
``<name>`` (default: the factory's name) with method ``external``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from . import atomic, identity, logs
from .config import ConfigError, Config, load_config, to_dict
from .data import DataError, expand_root, locate_data
from .distributed import record_fields
from .external import ExternalModelError, build_model, check_model, load_factory, load_weights
from .launch import merge
from .lock import RunLocked, acquire, worker_identity
from .records import (EXTERNAL_METHOD, LOCKED, RECORD, SCHEMA, environment, git_sha, trainable_params, versions,
                      write_json_atomic)
from .registry import RegistryError

__all__ = ["main", "external_run_id", "TRAIN_METHOD"]

PROG = "python -m robustbench_convnorm.evaluate"
TRAIN_METHOD = EXTERNAL_METHOD
_log = logs.get_logger("evaluate")


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a YAML config: its data, eval, device and output_dir are used")
    p.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                   help="the factory that builds the model, e.g. mymodels.cifar:build_wrn (called with no "
                        "arguments; the working directory is on the import path)")
    p.add_argument("--checkpoint", metavar="PATH", help="weights to load into the model (a state_dict file, or a "
                                                        "checkpoint holding one under 'state_dict' or 'model')")
    p.add_argument("--name", help="the model's name in the leaderboard (default: the factory's name)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value, repeatable: --set eval.n_examples=500")
    return p


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_") or "model"


def dataset_name(cfg: Config) -> str:
    """The dataset as records name it (records.new_record's rule)."""
    return cfg.data.source if cfg.data.source != "imagefolder" else cfg.data.options.get("name", "imagefolder")


def external_run_id(cfg: Config, spec: str, checkpoint_sha256: Optional[str], name: str) -> str:
    digest = identity.digest({"model": spec, "checkpoint_sha256": checkpoint_sha256, "data": to_dict(cfg.data)})
    return f"{dataset_name(cfg)}-{TRAIN_METHOD}-{_slug(name)}-{digest}"


def _record(cfg: Config, run_id: str, name: str, spec: str, checkpoint: Optional[str], sha: Optional[str],
            device: torch.device, model, data) -> Dict[str, Any]:
    """A record with a trained run's fields, saying what was evaluated: no
    training (train_method external, no train_eps), the model spec and
    checkpoint in ``external`` and in the model's identity."""
    seed = cfg.seeds[0]
    config = {"data": to_dict(cfg.data), "eval": to_dict(cfg.eval), "device": cfg.device, "threads": cfg.threads,
              "output_dir": cfg.output_dir, "name": cfg.name, "seeds": [seed]}
    return {
        "schema": SCHEMA, "run_id": run_id, "status": "running", "error": None,
        "dataset": dataset_name(cfg), "arch": TRAIN_METHOD, "normalizer": name, "normalizer_name": TRAIN_METHOD,
        # what makes this model itself (the leaderboard's model identity)
        "normalizer_options": {"model": spec, "checkpoint_sha256": sha},
        "batchnorm": False, "train_method": TRAIN_METHOD, "train_eps": None,
        "seed": seed, "grid_seeds": [seed], "grid_axes": {}, "config": config,
        "external": {"model": spec, "checkpoint": checkpoint, "checkpoint_sha256": sha},
        "metrics": {}, "evaluations": {}, "flags": [], "lipschitz": None,
        "params": trainable_params(model), "timings": {},
        "versions": versions(), "git_sha": git_sha(), "device": str(device),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data_note": data.note, "data_root": expand_root(cfg.data.root), "worker": None,
        "environment": environment(device), "checkpoint_notes": [], **record_fields(),
    }


@contextlib.contextmanager
def _cwd_importable():
    """The working directory on the import path while the model is built, as
    under ``python -m`` (the console script's path lacks it)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    with logs.console():
        try:
            return _main(_parser(prog).parse_args(argv))
        except KeyboardInterrupt:
            print("\nstopped by Ctrl-C; the record says the evaluation was interrupted", file=sys.stderr)
            return 130


def _main(args) -> int:
    from .run import DataCache, apply_threads, check_output_dir, config_warnings, resolve_device
    from .run.cli import _reproducible_mode
    from .run.grid import check_evaluators

    try:
        with config_warnings():
            cfg = load_config(args.config, args.overrides)
        _reproducible_mode(cfg)  # the config's reproducible CPU mode, before any work
        check_evaluators(cfg.eval.evaluators)
        _log.info(f"data: {locate_data(cfg.data)}")
        device = resolve_device(cfg.device)
        check_output_dir(cfg.output_dir)
        apply_threads(cfg)
        torch.manual_seed(cfg.seeds[0])  # a factory that initialises weights at random draws the same ones
        data = DataCache().get(cfg.data, cfg.seeds[0])
    except (ConfigError, DataError, RegistryError) as err:
        print(f"config error: {args.config}: {err}" if isinstance(err, RegistryError) else f"config error: {err}",
              file=sys.stderr)
        return 2
    try:
        with _cwd_importable():
            factory = load_factory(args.model)
            model = build_model(factory, args.model)
        sha = load_weights(model, args.checkpoint, args.model) if args.checkpoint else None
        model = model.to(device).eval()
        probe = data.test_x[:2].to(device).float() / 255
        check_model(model, probe, data.num_classes, dataset_name(cfg), args.model)
    except ExternalModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = args.name or args.model.partition(":")[2].split(".")[-1]
    run_id = external_run_id(cfg, args.model, sha, name)
    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    record = _record(cfg, run_id, name, args.model, checkpoint, sha, device, model, data)
    status = _evaluate(record, model, data, cfg, device)
    merge.build_once(cfg.output_dir, log=_log.info)
    return 0 if status == "finished" else 1


def _evaluate(record: Dict[str, Any], model, data, cfg: Config, device) -> str:
    """Evaluate into the record under the run's lock and log; the status it ends with."""
    from .run import PER_EXAMPLE, evaluate_into
    from .run.execute import failure

    run_dir = Path(cfg.output_dir) / "runs" / record["run_id"]
    try:
        lock = acquire(run_dir, owner="evaluate")
    except RunLocked as err:
        print(f"error: {err}; wait for it to end", file=sys.stderr)
        return LOCKED
    try:
        record["worker"] = worker_identity("evaluate")
        with logs.run_log(run_dir, f"{record['run_id']}: evaluate {record['external']['model']} "
                                   f"({logs.describe_worker(record['worker'])})"):
            _log.info(f"{record['run_id']}: evaluating {record['external']['model']}"
                      + (f" with {record['external']['checkpoint']}" if record["external"]["checkpoint"] else ""))
            write_json_atomic(record, run_dir / RECORD)
            tell = logs.teller(_log)
            try:
                per_example = evaluate_into(record, model, data, cfg, device, tell, run_dir,
                                            title=f"{record['normalizer']} (external)")
                lock.ensure_held()
                atomic.write_csv(run_dir / PER_EXAMPLE, per_example)
                record["status"] = "finished"
            except KeyboardInterrupt:
                record["status"], record["error"] = "interrupted", {"epoch": None, "reason": "interrupted (Ctrl-C)"}
                raise
            except Exception as err:  # recorded, as a trained run's failure is
                record["status"], record["error"] = "failed", failure(err)
                _log.info(f"[failed] {record['run_id']}: {record['error']['reason']}")
            finally:
                lock.ensure_held()
                write_json_atomic(record, run_dir / RECORD)
        _log.info(f"record: {run_dir / RECORD}")
        return record["status"]
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
