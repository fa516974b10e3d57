"""A config -> its grid of runs (normalizers x seeds x grid axes), each with
a stable run id (a hash of what is trained: identity.py)."""
from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from .. import identity
from .files import set_path, to_dict
from .sections import Config, ConfigError, NormalizerEntry
from .validate import config_from_dict


@dataclass
class RunSpec:
    """One run of a grid: a config whose ``normalizers`` and ``seeds`` hold one
    entry each, plus its stable id."""
    config: Config
    normalizer: NormalizerEntry
    seed: int
    run_id: str
    axes: Dict[str, Any] = field(default_factory=dict)
    grid_seeds: List[int] = field(default_factory=list)  # every seed of the grid, for tables

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output_dir) / "runs" / self.run_id


def run_identity(cfg: Config) -> Dict[str, Any]:
    """What the run id hashes; identity.py says what is left out and why."""
    return identity.run_identity(to_dict(cfg))


def make_run_id(cfg: Config) -> str:
    entry = cfg.normalizers[0]
    digest = identity.digest(run_identity(cfg))
    label = re.sub(r"[^A-Za-z0-9_.]+", "_", entry.label or entry.name)
    bn = "-bn" if cfg.batchnorm else ""
    return f"{cfg.data.source}-{cfg.model.arch}-{label}{bn}-{cfg.train.method}-s{cfg.seeds[0]}-{digest}"


def _resolved_normalizer_options(name: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Every option the normalizer is built with, defaults included (see
    Normalizer.resolved_options); an unknown name is left for preflight to name."""
    from ..normalizers.registry import NORMALIZERS

    if name not in NORMALIZERS:
        return options
    return NORMALIZERS.get(name).resolved_options(options)


def expand_grid(cfg: Config, source: str = "<config>") -> List[RunSpec]:
    """normalizer x seed x every axis in ``grid``; per-normalizer overrides last."""
    base = to_dict(cfg)
    axes = list(cfg.grid.items())
    for key, values in axes:
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: grid.{key}: expected a non-empty list of values")
    specs: List[RunSpec] = []
    for entry, seed, combo in itertools.product(
            cfg.normalizers, cfg.seeds, itertools.product(*[v for _, v in axes])):
        raw = copy.deepcopy(base)
        raw["grid"] = {}
        raw["normalizers"] = [to_dict(entry)]
        raw["seeds"] = [seed]
        chosen = {}
        for (key, _), value in zip(axes, combo):
            set_path(raw, key, value, source=f"{source} (grid.{key})")
            chosen[key] = value
        for key, value in entry.overrides.items():
            set_path(raw, key, value, source=f"{source} (normalizer {entry.name} overrides.{key})")
        norm = raw["normalizers"][0]
        norm["options"] = _resolved_normalizer_options(norm["name"], norm["options"])
        run_cfg = config_from_dict(raw, source=source)
        run_cfg.grid = dict(cfg.grid)
        specs.append(RunSpec(run_cfg, run_cfg.normalizers[0], seed, make_run_id(run_cfg), chosen,
                             list(cfg.seeds)))
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{source}: two runs of the grid are identical; list each normalizer, "
                          f"seed and grid value once (or give entries distinct options/labels)")
    return specs
