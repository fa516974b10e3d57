"""The two tables every output is made from: one row per run, one row per model
(mean, sample std and a 95 % interval for every metric). No formatting here."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import pandas as pd

from ..reliability import unreliable_flags
from . import stats
from .groups import GROUP_KEYS, Group, seeds_text, sortable, status_text
from .metrics import MetricInfo, example_count, is_proportion
from .records import Run

KEY_FIELDS = GROUP_KEYS + ("variant",)
STAT_SUFFIXES = ("mean", "std", "ci_lo", "ci_hi")


def _json_compact(d: dict) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), default=str) if d else ""


def runs_frame(runs: Sequence[Run], groups: Sequence[Group], info: MetricInfo, results_dir: Path) -> pd.DataFrame:
    record_metrics = [m for m in info.names if m not in ("params", "train_seconds_per_epoch")]
    group_of = {id(r): g for g in groups for r in g.runs}
    rows = []
    for r in sorted(runs, key=lambda r: (sortable(r.key), -1 if r.seed is None else r.seed, r.run_id)):
        g = group_of[id(r)]
        row: Dict[str, Any] = {"run_id": r.run_id, "status": r.status}
        row.update(dict(zip(GROUP_KEYS, r.key)))
        row.update(train_eps=r.train_eps, variant=g.variant, model=g.label, model_id=g.model_id,
                   normalizer_options=_json_compact(r.normalizer_options), seed=r.seed,
                   counts=any(rep is r for rep in g.reps.values()))
        for m in record_metrics:
            row[m] = r.metrics.get(m, math.nan)
        row["params"] = r.params
        for t in ("train_seconds", "train_seconds_per_epoch", "eval_seconds", "epochs_done"):
            row[t] = r.timings.get(t, math.nan)
        row.update(flags=";".join(r.flags), error_epoch=r.error_epoch, error_reason=r.error_reason,
                   device=r.device, git_sha=r.git_sha, created=r.created, data_note=r.data_note)
        try:
            row["record"] = str(r.path.relative_to(results_dir))
        except ValueError:
            row["record"] = str(r.path)
        rows.append(row)
    columns = (["run_id", "status", *GROUP_KEYS[:3], "normalizer_options", *GROUP_KEYS[3:], "variant", "model",
                "model_id", "seed", "counts"]
               + record_metrics + ["params", "train_seconds", "train_seconds_per_epoch", "eval_seconds",
                                   "epochs_done", "flags", "error_epoch", "error_reason", "device",
                                   "git_sha", "created", "data_note", "record"])
    df = pd.DataFrame(rows, columns=columns)
    df["seed"] = df["seed"].astype("Int64")
    df["params"] = df["params"].astype(float)
    return df


def metric_stats(runs: Sequence[Run], metric: str, alpha: float = stats.ALPHA) -> Dict[str, float]:
    """mean, sample std (NaN for one value) and the interval: Wilson for one run of a
    proportion (from its example count), the t interval over seeds for several."""
    vals = np.array([r.value(metric) for r in runs], dtype=float)
    have = [r for r, v in zip(runs, vals) if not math.isnan(v)]
    vals = vals[~np.isnan(vals)]
    out = {"mean": math.nan, "std": math.nan, "ci_lo": math.nan, "ci_hi": math.nan}
    if not len(vals):
        return out
    out["mean"] = float(vals.mean())
    if len(vals) >= 2:
        out["std"] = float(vals.std(ddof=1))
        out["ci_lo"], out["ci_hi"] = stats.seed_interval(vals, alpha)
    elif is_proportion(metric):
        out["ci_lo"], out["ci_hi"] = stats.wilson_interval(vals[0], example_count(have[0], metric), alpha)
    return out


def groups_frame(groups: Sequence[Group], info: MetricInfo, alpha: float = stats.ALPHA) -> pd.DataFrame:
    rows = []
    for g in groups:
        row: Dict[str, Any] = dict(zip(GROUP_KEYS, g.key))
        row["train_eps"] = g.context["train_eps"]
        fin = g.finished
        row.update(variant=g.variant, model=g.label, model_id=g.model_id, n_seeds=len(fin),
                   n_failed=len(g.failed), n_running=len(g.unfinished),
                   n_expected=len(set(g.expected) | set(g.reps)),
                   seeds=seeds_text(r.seed for r in fin if r.seed is not None),
                   missing_seeds=seeds_text(g.missing), status=status_text(g),
                   n_records=len(g.runs))
        for m in info.names:
            for suffix, v in metric_stats(fin, m, alpha).items():
                row[f"{m}_{suffix}"] = v
        row["flags"] = ";".join(sorted({f for r in g.reps.values() for f in r.flags}))
        # a finished seed whose evaluation failed a severe check makes the model's numbers untrustworthy
        severe = unreliable_flags(f for r in fin for f in r.flags)
        row["unreliable"], row["unreliable_flags"] = bool(severe), ";".join(severe)
        row["data_note"] = " | ".join(sorted({r.data_note for r in g.runs if r.data_note}))
        row["_gkey"] = g.key  # internal: not written
        rows.append(row)
    columns = (["rank", "tied_with_above", "p_vs_above", "test_vs_above", *KEY_FIELDS, "model", "model_id",
                "n_seeds", "n_failed", "n_running", "n_expected", "n_records", "seeds", "missing_seeds", "status"]
               + [f"{m}_{s}" for m in info.names for s in STAT_SUFFIXES]
               + ["flags", "unreliable", "unreliable_flags", "data_note", "_gkey"])
    df = pd.DataFrame(rows, columns=columns)
    df["unreliable"] = df["unreliable"].astype(bool)
    for c in ("n_seeds", "n_failed", "n_running", "n_expected", "n_records"):
        df[c] = df[c].astype(int)
    return df


def metric_columns(df: pd.DataFrame, metrics: List[str]) -> List[str]:
    """The metrics that some row of df has a value for."""
    return [m for m in metrics if f"{m}_mean" in df and df[f"{m}_mean"].notna().any()]
