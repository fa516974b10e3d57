"""The tolerant record reader: ``record.json`` -> :class:`Run`.

A record that cannot be read (half-written, corrupt, not a run record) is
skipped with a :class:`LeaderboardWarning` and reported; it never stops the
build. Fields the leaderboard needs fall back to the record's resolved
``config`` when the record itself lacks them.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from .. import identity

PER_EXAMPLE = "per_example.csv"
#: how a published run stores it (results/published/ travels to GPU machines: size counts)
PER_EXAMPLE_GZ = PER_EXAMPLE + ".gz"
TRAIN_LOG = "train_log.csv"
# Grid axes that are already part of the row key (or the seed); legacy records only.
_AXES_IN_KEY = {"seeds", "normalizers", "batchnorm", "data.source", "model.arch", "train.method", "train.eps"}


#: cost columns read from a record's ``cost`` (robustbench_convnorm/cost.py)
COST_METRICS = ("train_seconds", "train_images_per_second", "peak_memory_mb", "eval_seconds")


class LeaderboardWarning(UserWarning):
    """A record was skipped or only partly understood."""


@dataclass
class Run:
    """What the leaderboard needs from one record.json."""

    path: Path
    run_id: str
    status: str
    key: Tuple  # (dataset, arch, normalizer, batchnorm, train_method, train_eps, model hash)
    seed: Optional[int]
    metrics: Dict[str, float]  # numeric entries of record["metrics"]
    evaluations: Dict[str, dict]
    params: float
    timings: Dict[str, float]
    flags: List[str]
    identity: Dict[str, Any] = field(default_factory=dict)  # dotted model identity (no seed)
    error_epoch: Any = None
    error_reason: str = ""
    expected_seeds: Optional[List[int]] = None
    normalizer_options: Dict[str, Any] = field(default_factory=dict)
    data_note: str = ""
    created: str = ""
    device: str = ""
    git_sha: str = ""
    train_eps: float = math.nan  # as recorded (the key holds it rounded, for grouping)
    lipschitz: Optional[dict] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    _per_example: Any = field(default=None, repr=False)

    def value(self, metric: str) -> float:
        """A metric of this run, with params and seconds per epoch alongside the metrics."""
        if metric in self.metrics:
            return self.metrics[metric]
        if metric == "params":
            return self.params
        if metric == "train_seconds_per_epoch":
            return self.timings.get("train_seconds_per_epoch", math.nan)
        if metric in COST_METRICS:
            return self.cost(metric)
        return math.nan

    def cost(self, metric: str) -> float:
        """A cost column from the record's ``cost`` (cost.py): training seconds,
        images per second, peak memory, or the evaluators' seconds summed."""
        cost = self.raw.get("cost")
        if not isinstance(cost, dict):
            return math.nan
        if metric == "eval_seconds":
            parts = cost.get("eval_seconds")
            return float(sum(parts.values())) if isinstance(parts, dict) and parts else math.nan
        return num(cost.get(metric))

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    def per_example(self) -> Optional[pd.DataFrame]:
        """per_example.csv beside the record (read once; a published run keeps it
        gzipped, per_example.csv.gz), or None if absent or unreadable."""
        if self._per_example is None:
            plain = self.run_dir / PER_EXAMPLE
            path = plain if plain.exists() else self.run_dir / PER_EXAMPLE_GZ
            try:
                self._per_example = pd.read_csv(path)
            except (OSError, ValueError, EOFError, pd.errors.ParserError):
                self._per_example = False
        return self._per_example if self._per_example is not False else None

    def train_log(self) -> Optional[pd.DataFrame]:
        try:
            log = pd.read_csv(self.run_dir / TRAIN_LOG)
        except (OSError, ValueError, pd.errors.ParserError):
            return None
        return log if "epoch" in log.columns and len(log) else None


def num(x: Any) -> float:
    """A float from a JSON value ("8/255" too), NaN for anything that is not a number."""
    if isinstance(x, bool) or x is None:
        return math.nan
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str):
        s = x.strip()
        m = re.fullmatch(r"([-+0-9.eE]+)\s*/\s*([-+0-9.eE]+)", s)
        try:
            return float(m.group(1)) / float(m.group(2)) if m else float(s)
        except (ValueError, ZeroDivisionError):
            return math.nan
    return math.nan


def _key_eps(x: Any) -> Optional[float]:
    """train_eps as a key value: None when absent, rounded so that equal configs group."""
    v = num(x)
    return None if math.isnan(v) else round(v, 10)


#: seeds are 64-bit (config.MAX_SEED); the tables hold them as int64
_MAX_SEED = 2 ** 63 - 1


def _seed(x: Any) -> Optional[int]:
    if isinstance(x, int) and not isinstance(x, bool):
        seed = x  # exact: seeds go up to 2**63 - 1, past what a float holds
    else:
        v = num(x)
        if math.isnan(v):
            return None
        if not math.isfinite(v) or v != int(v):
            raise ValueError(f"seed {x!r} is not an integer")
        seed = int(v)
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed {seed} does not fit 64 bits (0 to 2**63-1): not a seed the run command writes")
    return seed


def _finite(path: Path, block: str, values: Dict[str, float]) -> Dict[str, float]:
    """The finite entries; an infinite one is dropped with a warning naming it
    (an accuracy or a time cannot be infinite: the record is damaged there)."""
    bad = sorted(k for k, v in values.items() if math.isinf(v))
    if bad:
        warnings.warn(f"{path}: {block} {', '.join(bad)} infinite: left out of the leaderboard",
                      LeaderboardWarning, stacklevel=4)
    return {k: v for k, v in values.items() if not math.isinf(v)}


def _is_resolved_config(config: dict) -> bool:
    """A record written by the run command holds the whole resolved config."""
    return isinstance(config.get("normalizers"), list) and isinstance(config.get("train"), dict)


def model_identity(data: dict, config: dict) -> Dict[str, Any]:
    """The dotted model identity of a record: from its resolved config (what the
    run id hashes, without the seed), or, for hand-made and older records, from
    its normalizer options and grid axes."""
    if _is_resolved_config(config):
        return identity.flatten(identity.model_identity(config))
    options = data.get("normalizer_options") if isinstance(data.get("normalizer_options"), dict) else {}
    axes = data.get("grid_axes") if isinstance(data.get("grid_axes"), dict) else {}
    out = {f"normalizer_options.{k}": v for k, v in options.items()}
    out.update({str(k): v for k, v in axes.items() if k not in _AXES_IN_KEY})
    return out


def parse_record(path: Path, data: Any) -> Run:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("run_id", "status") if k not in data]
    if missing:
        raise ValueError(f"no {' or '.join(missing)} field: not a run record")
    schema = data.get("schema", 1)
    if schema != 1:
        warnings.warn(f"{path}: record schema {schema!r}, expected 1; reading it as schema 1",
                      LeaderboardWarning, stacklevel=3)
    config = data.get("config") if isinstance(data.get("config"), dict) else {}

    def field_(name):  # identity fields fall back to the resolved config
        v = data.get(name)
        return config.get(name) if v is None else v

    ident = model_identity(data, config)
    key = (
        None if field_("dataset") is None else str(field_("dataset")),
        None if field_("arch") is None else str(field_("arch")),
        None if field_("normalizer") is None else str(field_("normalizer")),
        bool(field_("batchnorm")),
        None if field_("train_method") is None else str(field_("train_method")),
        _key_eps(field_("train_eps")),
        identity.digest(ident),
    )
    raw_metrics = data.get("metrics") or {}
    if not isinstance(raw_metrics, dict):
        raise ValueError("'metrics' is not an object")
    metrics = {str(k): num(v) for k, v in raw_metrics.items()
               if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    metrics = _finite(path, "metric", {k: v for k, v in metrics.items() if not math.isnan(v)})
    evaluations = data.get("evaluations") if isinstance(data.get("evaluations"), dict) else {}
    evaluations = {str(k): v for k, v in evaluations.items() if isinstance(v, dict)}
    raw_timings = data.get("timings") or {}
    timings = {str(k): num(v) for k, v in raw_timings.items()} if isinstance(raw_timings, dict) else {}
    timings = _finite(path, "timing", timings)
    if math.isnan(timings.get("train_seconds_per_epoch", math.nan)):
        total, epochs = timings.get("train_seconds", math.nan), timings.get("epochs_done", math.nan)
        if not math.isnan(total) and not math.isnan(epochs) and epochs > 0:
            timings["train_seconds_per_epoch"] = total / epochs
    flags = data.get("flags") or []
    if isinstance(flags, str):
        flags = [flags]
    error = data.get("error") if isinstance(data.get("error"), dict) else {}
    if isinstance(data.get("error"), str):
        error = {"reason": data["error"]}
    # the grid's seeds (a run's own config holds only its seed)
    seeds = data.get("grid_seeds") or config.get("seeds")
    expected = None
    if isinstance(seeds, (list, tuple)):
        expected = sorted({s for s in (_seed(x) for x in seeds) if s is not None})
    options = data.get("normalizer_options")
    text = lambda name: "" if data.get(name) is None else str(data[name])  # noqa: E731
    return Run(
        path=path, run_id=str(data["run_id"]), status=str(data["status"]), key=key,
        seed=_seed(field_("seed")), metrics=metrics, evaluations=evaluations,
        params=_finite(path, "field", {"params": num(data.get("params"))}).get("params", math.nan),
        timings=timings, flags=[str(f) for f in flags],
        identity=ident, error_epoch=error.get("epoch"),
        error_reason="" if error.get("reason") is None else str(error.get("reason")),
        expected_seeds=expected, normalizer_options=options if isinstance(options, dict) else {},
        data_note=text("data_note"), created=text("created"), device=text("device"), git_sha=text("git_sha"),
        train_eps=num(field_("train_eps")),
        lipschitz=data.get("lipschitz") if isinstance(data.get("lipschitz"), dict) else None,
        raw=data,
    )


def record_paths(results_dir: Path) -> List[Path]:
    """RESULTS_DIR/runs/*/record.json; RESULTS_DIR/*/record.json when given the runs folder itself."""
    runs_dir = results_dir / "runs"
    if runs_dir.is_dir():
        return sorted(runs_dir.glob("*/record.json"))
    return sorted(results_dir.glob("*/record.json"))


def load_runs(results_dir) -> Tuple[List[Run], List[Tuple[Path, str]]]:
    """Every readable run record under results_dir, and (path, reason) for each skipped one."""
    runs: List[Run] = []
    skipped: List[Tuple[Path, str]] = []
    for path in record_paths(Path(results_dir)):
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
            runs.append(parse_record(path, data))
        except Exception as exc:  # one bad record must never stop the build
            reason = f"{type(exc).__name__}: {exc}"
            skipped.append((path, reason))
            warnings.warn(f"skipping unreadable record {path}: {reason}", LeaderboardWarning, stacklevel=2)
    return runs, skipped
