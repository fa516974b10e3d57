"""Everything checked and shown about a grid before any run starts: the
device, the names and options every run uses, its data, the output folder,
--only, and the --dry-run listing."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, List

import torch

from ..config import ConfigError, RunSpec, to_dict
from ..records import read_record
from ..registry import RegistryError

__all__ = ["resolve_device", "preflight", "check_evaluators", "check_data", "print_grid", "select_only", "check_output_dir"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no CUDA GPU; use device: auto or cpu")
    return torch.device(name)


def preflight(specs: List[RunSpec], source: str) -> None:
    """Check every name and option the grid uses before any work starts."""
    from ..builders import build_run_model
    from ..data import SOURCES
    from ..models import MODELS
    from ..registry import check_options

    seen = set()
    for spec in specs:
        cfg = spec.config
        try:
            key = json.dumps([to_dict(cfg.normalizers[0]), cfg.model.arch, cfg.batchnorm, cfg.model.width,
                              getattr(cfg.model, "options", {})],
                             sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                meta = {"num_classes": 10, "in_channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
                build_run_model(cfg, meta)
            check_options("data source", cfg.data.source, SOURCES.get(cfg.data.source), cfg.data.options)
            MODELS.get(cfg.model.arch)
            check_evaluators(cfg.eval.evaluators)
        except (RegistryError, TypeError, ValueError) as err:
            raise ConfigError(f"{source}: run {spec.run_id}: {err}") from None


def check_evaluators(evaluators) -> None:
    """Each evaluator builds from its options, and no two share a result name
    (their columns and metrics would collide after training)."""
    from .. import attacks

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


def check_data(specs: List[RunSpec], source: str) -> List[str]:
    """Whether the data of every run is where its config says, before any
    training: a ConfigError naming what is missing and how to point to it.
    Returns one line per data set found (for --dry-run)."""
    from ..data import DataError, locate_data

    found: Dict[str, str] = {}
    for spec in specs:
        data_cfg = spec.config.data
        key = json.dumps(to_dict(data_cfg), sort_keys=True, default=str)
        if key in found:
            continue
        try:
            found[key] = locate_data(data_cfg)
        except DataError as err:
            raise ConfigError(f"{source}: {err}") from None
    return list(dict.fromkeys(found.values()))


def print_grid(specs: List[RunSpec], out: Callable[[str], object] = print) -> None:
    out(f"{len(specs)} run(s):")
    for s in specs:
        c = s.config
        extra = " ".join(f"{k}={v}" for k, v in s.axes.items())
        status = (read_record(s.run_dir) or {}).get("status", "new")
        # a budgeted run fixes its epochs at its start, from its own warm-up
        length = f"budget={c.train.budget}" if c.train.budget else f"epochs={c.train.epochs}"
        out(f"  {s.run_id:<60} {c.train.method:<8} {length} lr={c.train.lr:g} "
            f"bn={c.batchnorm} seed={s.seed} {extra} [{status}]")


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
