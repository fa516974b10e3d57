"""Leaderboard tables and plots, built from run records alone.

    python -m robustbench_convnorm.leaderboard RESULTS_DIR [--rank-by METRIC] [--out DIR]

reads ``RESULTS_DIR/runs/*/record.json`` (schema in docs/ARCHITECTURE.md) and
writes, into ``--out`` (default: RESULTS_DIR):

- ``leaderboard_runs.csv``  one row per run;
- ``leaderboard.csv``       one row per model, i.e. per (dataset, arch,
                            normalizer, batchnorm, train_method, train_eps),
                            with mean and sample std over seeds;
- ``leaderboard.md``        ranked tables (a row per model, and the paper's
                            Table 1 layout: attacks as rows, models as columns)
                            with notes on what is missing, failed or flagged;
- PNG plots, each only when the records hold data for it.

Every column is documented in docs/leaderboard.md. A record that cannot be
read (half-written, corrupt, not a run record) is skipped with a warning and
listed in leaderboard.md; it never stops the build.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

__all__ = ["build_leaderboard", "load_runs", "main", "LeaderboardWarning"]

GROUP_KEYS = ("dataset", "arch", "normalizer", "batchnorm", "train_method", "train_eps")
# The full key adds `variant` (normalizer options and extra grid axes), so that two
# genuinely different models that share the six fields above are never averaged.
KEY_FIELDS = GROUP_KEYS + ("variant",)
# Grid axes already part of the key (or of the seed): not repeated in `variant`.
_AXES_IN_KEY = {"seeds", "normalizers", "batchnorm", "data.source", "model.arch", "train.method", "train.eps"}
# Models that share a context are directly comparable (one paper-layout table each).
CONTEXT_KEYS = ("dataset", "arch", "train_method", "train_eps")

# Metrics that are better when lower; every other metric ranks higher-is-better.
LOWER_IS_BETTER = {"train_seconds_per_epoch", "params", "lip_product_log10", "mean_layer_spectral_norm"}

# Names of `*_acc` metrics that are not white-box attacks, when the record does
# not say so through evaluations[name]["kind"].
_NOT_WHITEBOX_PREFIXES = ("clean", "worst_case", "simba", "noise", "random", "blackbox", "square")

PLOT_FILES = {
    "plot_robust_vs_clean": "robust_vs_clean.png",
    "plot_acc_vs_eps": "acc_vs_eps.png",
    "plot_acc_vs_steps": "acc_vs_steps.png",
    "plot_simba_curve": "simba_success_vs_queries.png",
}


class LeaderboardWarning(UserWarning):
    """A record was skipped or only partly understood."""


# --------------------------------------------------------------------------- records


@dataclass
class Run:
    """What the leaderboard needs from one record.json."""

    path: Path
    run_id: str
    status: str
    key: Tuple  # KEY_FIELDS values
    seed: Optional[int]
    metrics: Dict[str, float]  # numeric entries of record["metrics"]
    evaluations: Dict[str, dict]
    params: float
    timings: Dict[str, float]
    flags: List[str]
    error_epoch: Any = None
    error_reason: str = ""
    expected_seeds: Optional[List[int]] = None
    normalizer_options: Dict[str, Any] = field(default_factory=dict)
    data_note: str = ""
    created: str = ""
    device: str = ""
    git_sha: str = ""
    train_eps: float = math.nan  # as recorded (the key holds it rounded, for grouping)

    def value(self, metric: str) -> float:
        """A metric of this run, with params and seconds per epoch alongside the metrics."""
        if metric in self.metrics:
            return self.metrics[metric]
        if metric == "params":
            return self.params
        if metric == "train_seconds_per_epoch":
            return self.timings.get("train_seconds_per_epoch", math.nan)
        return math.nan


def _num(x: Any) -> float:
    """A float from a JSON value, NaN for anything that is not a number."""
    if isinstance(x, bool) or x is None:
        return math.nan
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str):
        s = x.strip()
        m = re.fullmatch(r"([-+0-9.eE]+)\s*/\s*([-+0-9.eE]+)", s)  # "8/255"
        try:
            return float(m.group(1)) / float(m.group(2)) if m else float(s)
        except (ValueError, ZeroDivisionError):
            return math.nan
    return math.nan


def _isnan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _key_eps(x: Any) -> Optional[float]:
    """train_eps as a group-key value: None when absent, rounded so that equal configs group."""
    v = _num(x)
    return None if math.isnan(v) else round(v, 10)


def _short(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str) if isinstance(v, (dict, list)) else str(v)


def _seed(x: Any) -> Optional[int]:
    v = _num(x)
    return None if math.isnan(v) else int(v)


def _parse_record(path: Path, data: Any) -> Run:
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

    options = data.get("normalizer_options")
    options = options if isinstance(options, dict) else {}
    axes = data.get("grid_axes") if isinstance(data.get("grid_axes"), dict) else {}
    variant = ", ".join([f"{k}={_short(v)}" for k, v in sorted(options.items())]
                        + [f"{k}={_short(v)}" for k, v in sorted(axes.items()) if k not in _AXES_IN_KEY])
    key = (
        None if field_("dataset") is None else str(field_("dataset")),
        None if field_("arch") is None else str(field_("arch")),
        None if field_("normalizer") is None else str(field_("normalizer")),
        bool(field_("batchnorm")),
        None if field_("train_method") is None else str(field_("train_method")),
        _key_eps(field_("train_eps")),
        variant,
    )
    raw_metrics = data.get("metrics") or {}
    if not isinstance(raw_metrics, dict):
        raise ValueError("'metrics' is not an object")
    metrics = {str(k): _num(v) for k, v in raw_metrics.items()
               if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
    evaluations = data.get("evaluations") or {}
    if not isinstance(evaluations, dict):
        evaluations = {}
    evaluations = {str(k): v for k, v in evaluations.items() if isinstance(v, dict)}
    raw_timings = data.get("timings") or {}
    timings = ({str(k): _num(v) for k, v in raw_timings.items()}
               if isinstance(raw_timings, dict) else {})
    per_epoch = timings.get("train_seconds_per_epoch", math.nan)
    if math.isnan(per_epoch):
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
    return Run(
        path=path,
        run_id=str(data["run_id"]),
        status=str(data["status"]),
        key=key,
        seed=_seed(field_("seed")),
        metrics=metrics,
        evaluations=evaluations,
        params=_num(data.get("params")),
        timings=timings,
        flags=[str(f) for f in flags],
        error_epoch=error.get("epoch"),
        error_reason="" if error.get("reason") is None else str(error.get("reason")),
        expected_seeds=expected,
        normalizer_options=options,
        data_note="" if not data.get("data_note") else str(data["data_note"]),
        created="" if data.get("created") is None else str(data["created"]),
        device="" if data.get("device") is None else str(data["device"]),
        git_sha="" if data.get("git_sha") is None else str(data["git_sha"]),
        train_eps=_num(field_("train_eps")),
    )


def record_paths(results_dir: Path) -> List[Path]:
    """RESULTS_DIR/runs/*/record.json; RESULTS_DIR/*/record.json when given the runs folder itself."""
    runs_dir = results_dir / "runs"
    if runs_dir.is_dir():
        return sorted(runs_dir.glob("*/record.json"))
    return sorted(results_dir.glob("*/record.json"))


def load_runs(results_dir) -> Tuple[List[Run], List[Tuple[Path, str]]]:
    """Every readable run record under results_dir, and (path, reason) for each skipped one."""
    results_dir = Path(results_dir)
    runs: List[Run] = []
    skipped: List[Tuple[Path, str]] = []
    for path in record_paths(results_dir):
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
            runs.append(_parse_record(path, data))
        except Exception as exc:  # one bad record must never stop the build
            reason = f"{type(exc).__name__}: {exc}"
            skipped.append((path, reason))
            warnings.warn(f"skipping unreadable record {path}: {reason}", LeaderboardWarning, stacklevel=2)
    return runs, skipped


# --------------------------------------------------------------------------- metrics


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _eval_base(name: str, ev: dict) -> str:
    for k in ("type", "attack", "evaluator"):
        if isinstance(ev.get(k), str):
            return ev[k].lower()
    m = re.match(r"[a-z_]*?[a-z]+", name.lower())
    return m.group(0) if m else name.lower()


def _family_rank(name: str) -> int:
    n = name.lower()
    if n.startswith("fgsm"):
        return 0
    if n.startswith("pgd"):
        return 1
    if n.startswith(("autoattack", "aa", "apgd")):
        return 3
    return 2


@dataclass
class MetricInfo:
    names: List[str]  # every metric column, in display order
    whitebox: List[str]  # `<evaluator>_acc` columns of white-box attacks
    eval_eps: Dict[str, float]  # white-box column -> its eps, when the records say


def discover_metrics(runs: Sequence[Run]) -> MetricInfo:
    seen: Dict[str, None] = {}
    kinds: Dict[str, str] = {}
    eval_eps: Dict[str, float] = {}
    for r in runs:
        for k in r.metrics:
            seen.setdefault(k)
        for name, ev in r.evaluations.items():
            if isinstance(ev.get("kind"), str):
                kinds.setdefault(name, ev["kind"])
            e = _num(ev.get("eps"))
            if not math.isnan(e):
                eval_eps.setdefault(f"{name}_acc", e)

    def is_whitebox(metric: str) -> bool:
        if not metric.endswith("_acc") or metric in ("clean_acc", "worst_case_acc"):
            return False
        name = metric[: -len("_acc")]
        if name in kinds:
            return kinds[name] == "whitebox"
        return not name.lower().startswith(_NOT_WHITEBOX_PREFIXES)

    whitebox = sorted((m for m in seen if is_whitebox(m)), key=lambda m: (_family_rank(m), _natural(m)))
    other_acc = sorted(m for m in seen if m.endswith("_acc") and m not in whitebox
                       and m not in ("clean_acc", "worst_case_acc"))
    simba = ["simba_success_rate", "simba_avg_queries"]
    simba_other = sorted(m for m in seen if m.startswith("simba_") and m not in simba and m not in other_acc)
    tail = ["train_seconds_per_epoch", "params", "lip_product_log10", "mean_layer_spectral_norm"]
    order = (["clean_acc"] + whitebox + ["worst_case_acc"] + other_acc + simba + simba_other + tail)
    rest = sorted(m for m in seen if m not in order)
    order += rest
    present = set(seen)
    if any(not math.isnan(r.params) for r in runs):
        present.add("params")
    if any("train_seconds_per_epoch" in r.timings for r in runs):
        present.add("train_seconds_per_epoch")
    names = [m for m in order if m in present]
    return MetricInfo(names=names, whitebox=whitebox,
                      eval_eps={k: v for k, v in eval_eps.items() if k in whitebox})


# --------------------------------------------------------------------------- tables


def _json_compact(d: dict) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), default=str) if d else ""


def runs_frame(runs: Sequence[Run], info: MetricInfo, results_dir: Path) -> pd.DataFrame:
    record_metrics = [m for m in info.names if m not in ("params", "train_seconds_per_epoch")]
    rows = []
    for r in sorted(runs, key=lambda r: (_sortable(r.key), -1 if r.seed is None else r.seed, r.run_id)):
        row: Dict[str, Any] = {"run_id": r.run_id, "status": r.status}
        row.update(dict(zip(KEY_FIELDS, r.key)))
        row["train_eps"] = r.train_eps
        row["normalizer_options"] = _json_compact(r.normalizer_options)
        row["seed"] = r.seed
        for m in record_metrics:
            row[m] = r.metrics.get(m, math.nan)
        row["params"] = r.params
        for t in ("train_seconds", "train_seconds_per_epoch", "eval_seconds", "epochs_done"):
            row[t] = r.timings.get(t, math.nan)
        row["flags"] = ";".join(r.flags)
        row["error_epoch"] = r.error_epoch
        row["error_reason"] = r.error_reason
        row["device"] = r.device
        row["git_sha"] = r.git_sha
        row["created"] = r.created
        row["data_note"] = r.data_note
        try:
            row["record"] = str(r.path.relative_to(results_dir))
        except ValueError:
            row["record"] = str(r.path)
        rows.append(row)
    columns = (["run_id", "status", *GROUP_KEYS[:3], "normalizer_options", *GROUP_KEYS[3:], "variant", "seed"]
               + record_metrics + ["params", "train_seconds", "train_seconds_per_epoch", "eval_seconds",
                                   "epochs_done", "flags", "error_epoch", "error_reason", "device",
                                   "git_sha", "created", "data_note", "record"])
    df = pd.DataFrame(rows, columns=columns)
    df["seed"] = df["seed"].astype("Int64")
    df["params"] = df["params"].astype(float)
    return df


def _sortable(key: Tuple) -> Tuple:
    return tuple((v is None, "" if v is None else v) for v in key)


def model_label(normalizer: Optional[str], batchnorm: bool, variant: str = "") -> str:
    """normalizer(+BN) [variant]: 'convnorm+BN', 'sn', 'sn [train.lr=0.01]'. A normalizer
    labelled 'bn' (plain conv + BN, the paper's "BN" column) stays 'bn'."""
    name = normalizer or "?"
    bn = "+BN" if batchnorm and name.lower() not in ("bn", "batchnorm") else ""
    return f"{name}{bn}" + (f" [{variant}]" if variant else "")


@dataclass
class Group:
    key: Tuple
    runs: List[Run]
    reps: Dict[Any, Run] = field(default_factory=dict)  # seed (or run_id) -> the record that counts
    duplicates: List[Any] = field(default_factory=list)  # seeds with more than one record
    expected: List[int] = field(default_factory=list)
    label: str = ""
    notes: List[str] = field(default_factory=list)  # for leaderboard.md

    @property
    def finished(self) -> List[Run]:
        return [r for r in self.reps.values() if r.status == "finished"]

    @property
    def failed(self) -> List[Run]:
        return [r for r in self.reps.values() if r.status == "failed"]

    @property
    def unfinished(self) -> List[Run]:
        return [r for r in self.reps.values() if r.status not in ("finished", "failed")]


def _pick(records: List[Run]) -> Run:
    """The record that counts for one seed: the newest finished, else the newest running, else the newest."""
    rank = {"finished": 2, "failed": 0}
    return max(records, key=lambda r: (rank.get(r.status, 1), r.created, str(r.path)))


def _seeds_text(seeds: Iterable[Any]) -> str:
    seeds = ["?" if s is None else s for s in seeds]
    return ",".join(str(s) for s in sorted(seeds, key=lambda s: (isinstance(s, str), str(s) if isinstance(s, str) else s)))


def make_groups(runs: Sequence[Run], info: MetricInfo) -> List[Group]:
    by_key: Dict[Tuple, List[Run]] = {}
    for r in runs:
        by_key.setdefault(r.key, []).append(r)
    # run records hold only their own seed in config.seeds; the grid's seeds are
    # the union of every configured and every seen seed under RESULTS_DIR.
    expected = {r.seed for r in runs if r.seed is not None}
    for r in runs:
        expected.update(r.expected_seeds or ())
    expected_seeds = sorted(expected)
    # the variant shows in the label only where it tells models of one context apart
    variants: Dict[Tuple, set] = {}
    for key in by_key:
        variants.setdefault(key[:6], set()).add(key[6])
    groups = []
    for key in sorted(by_key, key=_sortable):
        g = Group(key=key, runs=by_key[key])
        by_seed: Dict[Any, List[Run]] = {}
        for r in g.runs:
            by_seed.setdefault(r.seed if r.seed is not None else f"run {r.run_id}", []).append(r)
        for s, recs in by_seed.items():
            g.reps[s] = _pick(recs)
            if len(recs) > 1:
                g.duplicates.append(s)
        g.expected = list(expected_seeds)
        g.label = model_label(key[2], key[3], key[6] if len(variants[key[:6]]) > 1 else "")
        _status_notes(g, info)
        groups.append(g)
    return groups


def _status_notes(g: Group, info: MetricInfo) -> None:
    """Fill g.notes: failures with their reasons, unfinished and missing seeds, duplicates, partial metrics."""
    for r in sorted(g.failed, key=lambda r: str(r.seed)):
        where = f" at epoch {r.error_epoch}" if r.error_epoch not in (None, "") else ""
        g.notes.append(f"seed {_txt(r.seed)} failed{where}: {r.error_reason or 'no reason recorded'}")
    for r in sorted(g.unfinished, key=lambda r: str(r.seed)):
        g.notes.append(f"seed {_txt(r.seed)} {r.status} (not finished)")
    missing = [s for s in g.expected if s not in g.reps]
    if missing:
        g.notes.append(f"seed{'s' if len(missing) > 1 else ''} {_seeds_text(missing)} "
                       f"{'have' if len(missing) > 1 else 'has'} no record")
    if g.duplicates:
        g.notes.append(f"several records for seed(s) {_seeds_text(g.duplicates)}; the newest finished one counts")
    fin = g.finished
    if len(fin) > 1:
        for m in info.names:
            have = sum(not math.isnan(r.value(m)) for r in fin)
            if 0 < have < len(fin):
                g.notes.append(f"{m} from {have} of {len(fin)} finished seeds")


def _status(g: Group) -> str:
    n_fin, n_fail, n_unf = len(g.finished), len(g.failed), len(g.unfinished)
    missing = [s for s in g.expected if s not in g.reps]
    n_expected = len(set(g.expected) | set(g.reps))
    parts = []
    if n_fail or n_unf or missing or n_fin < n_expected:
        parts.append(f"{n_fin}/{n_expected} finished")
    if n_fail:
        parts.append(f"{n_fail} failed (seed {_seeds_text(r.seed for r in g.failed)})")
    if n_unf:
        parts.append(f"{n_unf} not finished (seed {_seeds_text(r.seed for r in g.unfinished)})")
    if missing:
        parts.append(f"missing seeds {_seeds_text(missing)}")
    return ", ".join(parts) if parts else "ok"


def groups_frame(groups: Sequence[Group], info: MetricInfo) -> pd.DataFrame:
    rows = []
    for g in groups:
        row: Dict[str, Any] = dict(zip(KEY_FIELDS, g.key))
        row["train_eps"] = next((r.train_eps for r in g.runs if not math.isnan(r.train_eps)), math.nan)
        row["model"] = g.label
        fin = g.finished
        row["n_seeds"] = len(fin)
        row["n_failed"] = len(g.failed)
        row["n_running"] = len(g.unfinished)
        row["n_expected"] = len(set(g.expected) | set(g.reps))
        row["seeds"] = _seeds_text(r.seed for r in fin if r.seed is not None)
        row["missing_seeds"] = _seeds_text(s for s in g.expected if s not in g.reps)
        row["status"] = _status(g)
        for m in info.names:
            vals = np.array([r.value(m) for r in fin], dtype=float)
            vals = vals[~np.isnan(vals)]
            row[f"{m}_mean"] = float(vals.mean()) if len(vals) else math.nan
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) >= 2 else math.nan
        row["flags"] = ";".join(sorted({f for r in g.reps.values() for f in r.flags}))
        row["data_note"] = " | ".join(sorted({r.data_note for r in g.runs if r.data_note}))
        row["_gkey"] = g.key  # internal: not written
        rows.append(row)
    columns = (["rank", *KEY_FIELDS, "model", "n_seeds", "n_failed", "n_running", "n_expected", "seeds",
                "missing_seeds", "status"]
               + [f"{m}_{s}" for m in info.names for s in ("mean", "std")] + ["flags", "data_note", "_gkey"])
    df = pd.DataFrame(rows, columns=columns)
    for c in ("n_seeds", "n_failed", "n_running", "n_expected"):
        df[c] = df[c].astype(int)
    return df


# --------------------------------------------------------------------------- ranking


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric.endswith("success_rate")


def _main_eps(info: MetricInfo, df: pd.DataFrame) -> Optional[float]:
    """The eps most white-box columns share (preferring the training eps on a tie)."""
    eps = [round(e, 10) for e in info.eval_eps.values()]
    if not eps:
        return None
    counts = {e: eps.count(e) for e in set(eps)}
    train = [e for e in df["train_eps"].dropna().tolist()]
    train_count = {e: train.count(e) for e in set(train)}
    return max(counts, key=lambda e: (counts[e], train_count.get(e, 0), -e))


def strongest_whitebox(info: MetricInfo, df: pd.DataFrame) -> Optional[str]:
    """The white-box accuracy column of the strongest attack: among the columns at the
    common eps that the most models report, the one with the lowest average mean."""
    main_eps = _main_eps(info, df)
    cands = []
    for m in info.whitebox:
        col = df.get(f"{m}_mean")
        if col is None or col.notna().sum() == 0:
            continue
        e = info.eval_eps.get(m)
        if main_eps is not None and e is not None and round(e, 10) != main_eps:
            continue
        cands.append((m, int(col.notna().sum()), round(float(col.mean()), 9), len(cands)))
    if not cands:
        return None
    best_cov = max(c[1] for c in cands)
    # ties go to the later column (PGD-20 over PGD-10 over FGSM): more steps, no weaker
    return min((c for c in cands if c[1] == best_cov), key=lambda c: (c[2], -c[3]))[0]


def choose_rank_metric(info: MetricInfo, df: pd.DataFrame, rank_by: Optional[str]) -> Optional[str]:
    if rank_by:
        name = rank_by[:-len("_mean")] if rank_by.endswith("_mean") else rank_by
        for cand in (name, f"{name}_acc"):
            if cand in info.names:
                return cand
        raise ValueError(f"--rank-by {rank_by!r}: no such metric in the records; "
                         f"available: {', '.join(info.names) or '(none)'}")
    m = strongest_whitebox(info, df)
    if m:
        return m
    for m in ("worst_case_acc", "simba_success_rate", "simba_avg_queries", "clean_acc"):
        if m in info.names and df[f"{m}_mean"].notna().any():
            return m
    return None


def rank_frame(df: pd.DataFrame, metric: Optional[str]) -> pd.DataFrame:
    """Sort and number the models within each dataset by `metric` (ties: clean accuracy, label)."""
    df = df.copy()
    if df.empty:
        df["rank"] = pd.Series(dtype="Int64")
        return df
    sign = 1.0
    if metric is not None:
        sign = 1.0 if lower_is_better(metric) else -1.0
        key = df[f"{metric}_mean"] * sign
    else:
        key = pd.Series(math.nan, index=df.index)
    clean = -df["clean_acc_mean"] if "clean_acc_mean" in df else pd.Series(0.0, index=df.index)
    df["_k1"], df["_k2"] = key, clean.fillna(math.inf)
    df["_ds"] = df["dataset"].fillna("")
    df = df.sort_values(["_ds", "_k1", "_k2", "model", "arch", "train_method"], na_position="last",
                        kind="mergesort")
    ranks = []
    counter: Dict[str, int] = {}
    for ds, k in zip(df["_ds"], df["_k1"]):
        if math.isnan(k):
            ranks.append(pd.NA)
        else:
            counter[ds] = counter.get(ds, 0) + 1
            ranks.append(counter[ds])
    df["rank"] = pd.array(ranks, dtype="Int64")
    return df.drop(columns=["_k1", "_k2", "_ds"]).reset_index(drop=True)


# --------------------------------------------------------------------------- markdown


def metric_title(m: str) -> str:
    fixed = {
        "clean_acc": "clean", "worst_case_acc": "worst case", "simba_success_rate": "SimBA success %",
        "simba_avg_queries": "SimBA avg queries", "train_seconds_per_epoch": "s/epoch",
        "params": "params", "lip_product_log10": "log10 Lip bound", "mean_layer_spectral_norm": "mean layer σ",
    }
    if m in fixed:
        return fixed[m]
    name = m[:-len("_acc")] if m.endswith("_acc") else m
    mm = re.fullmatch(r"pgd(\d+)(.*)", name)
    if mm:
        return f"PGD-{mm.group(1)}{mm.group(2).replace('_', ' ')}"
    if name.startswith("fgsm"):
        return "FGSM" + name[4:].replace("_", " ")
    if name.lower() in ("autoattack", "aa"):
        return "AutoAttack"
    return name.replace("_", " ")


def _fmt_value(m: str, v: float) -> str:
    if m == "params":
        return f"{v:,.0f}"
    if m == "train_seconds_per_epoch":
        return f"{v:.1f}"
    if m == "mean_layer_spectral_norm":
        return f"{v:.3f}"
    return f"{v:.2f}"


def fmt_cell(m: str, mean: float, std: float) -> str:
    """'mean ± std'; just the mean for one seed (std empty); '–' with no value."""
    if _isnan(mean):
        return "–"
    if _isnan(std) or (m == "params" and std == 0):
        return _fmt_value(m, mean)
    return f"{_fmt_value(m, mean)} ± {_fmt_value(m, std)}"


def fmt_eps(e: Any) -> str:
    if _isnan(e):
        return "–"
    k = e * 255
    if e != 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{e:g}"


def _md_table(header: List[str], rows: List[List[str]]) -> List[str]:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return out


def _txt(v: Any) -> str:
    return "?" if _isnan(v) else str(v)


def _context_text(row) -> str:
    return f"{_txt(row['arch'])} · {_txt(row['train_method'])} · train eps {fmt_eps(row['train_eps'])}"


def render_markdown(df: pd.DataFrame, groups: Sequence[Group], info: MetricInfo, rank_metric: Optional[str],
                    skipped: Sequence[Tuple[Path, str]], results_dir: Path, ranked_by_default: bool) -> str:
    lines = ["# Leaderboard", ""]
    lines.append(f"Built from the run records under `{results_dir}`; cells are mean ± sample std over "
                 "finished seeds (the mean alone for one seed). Accuracies and rates in %.")
    if rank_metric:
        how = "lower is better" if lower_is_better(rank_metric) else "higher is better"
        why = " (the strongest white-box attack)" if ranked_by_default and rank_metric in info.whitebox else ""
        lines.append(f"Ranked within each dataset by **{metric_title(rank_metric)}**{why}, {how}.")
    lines.append("")
    if df.empty:
        lines.append("No run records found." if not skipped else "No readable run records found.")
    # The md shows the headline metrics; the CSVs hold every metric.
    headline = ["clean_acc", *info.whitebox, "worst_case_acc", "simba_success_rate", "simba_avg_queries",
                "train_seconds_per_epoch", "params", "lip_product_log10", "mean_layer_spectral_norm"]
    if rank_metric and rank_metric not in headline:
        headline.append(rank_metric)
    metric_cols = [m for m in info.names if m in headline and df[f"{m}_mean"].notna().any()]
    for ds, sub in df.groupby(df["dataset"].fillna("?"), sort=True):
        lines += [f"## {ds}", ""]
        varying = [k for k in ("arch", "train_method", "train_eps") if sub[k].nunique(dropna=False) > 1]
        if not varying:
            lines += [_context_text(sub.iloc[0]), ""]
        cols = [m for m in metric_cols if sub[f"{m}_mean"].notna().any()]
        header = ["rank", "model"] + [{"arch": "arch", "train_method": "method", "train_eps": "train eps"}[k]
                                      for k in varying]
        header += ["seeds"] + [metric_title(m) for m in cols] + ["status", "flags"]
        rows = []
        for _, r in sub.iterrows():
            row = ["–" if pd.isna(r["rank"]) else str(r["rank"]), r["model"]]
            row += [fmt_eps(r[k]) if k == "train_eps" else _txt(r[k]) for k in varying]
            row.append(f"{r['n_seeds']}/{r['n_expected']}")
            row += [fmt_cell(m, r[f"{m}_mean"], r[f"{m}_std"]) for m in cols]
            nflags = len(r["flags"].split(";")) if r["flags"] else 0
            row += [r["status"], str(nflags) if nflags else ""]
            rows.append(row)
        lines += _md_table(header, rows) + [""]

        # The paper's Table 1 layout: attacks as rows, models as columns, per comparable context.
        attack_rows = [m for m in ["clean_acc", *info.whitebox, "worst_case_acc", "simba_success_rate",
                                   "simba_avg_queries"] if m in cols]
        if attack_rows:
            for ctx, csub in sub.groupby([sub[k].astype(str) for k in ("arch", "train_method", "train_eps")],
                                         sort=False):
                lines += [f"### {ds} · {_context_text(csub.iloc[0])}: attacks × models", ""]
                header = ["attack"] + list(csub["model"])
                rows = []
                for m in attack_rows:
                    if not csub[f"{m}_mean"].notna().any():
                        continue
                    rows.append([metric_title(m)] + [fmt_cell(m, a, b) for a, b in
                                                     zip(csub[f"{m}_mean"], csub[f"{m}_std"])])
                lines += _md_table(header, rows) + [""]

    notes = [g for g in groups if g.notes]
    if notes or skipped:
        lines += ["## Missing, failed or partial", ""]
        for g in notes:
            d = dict(zip(GROUP_KEYS, g.key))
            where = f"{_txt(d['dataset'])} · {_context_text(d)}"
            lines.append(f"- **{g.label}** ({where}): " + "; ".join(g.notes))
        for path, reason in skipped:
            lines.append(f"- skipped unreadable record `{path}`: {reason}")
        lines.append("")
    flagged = [(r["model"], r) for _, r in df.iterrows() if r["flags"]]
    if flagged:
        lines += ["## Sanity-check flags (EVALUATION.md)", ""]
        for model, r in flagged:
            lines.append(f"- **{model}** ({_txt(r['dataset'])} · {_context_text(r)}): {r['flags'].replace(';', '; ')}")
        lines.append("")
    data_notes = sorted({r.data_note for g in groups for r in g.runs if r.data_note})
    if data_notes:
        lines += ["## Data", ""] + [f"- {n}" for n in data_notes] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def _eval_acc(run: Run, name: str, ev: dict) -> float:
    v = run.metrics.get(f"{name}_acc", math.nan)
    if math.isnan(v):
        for k in ("acc", "accuracy", "robust_acc"):
            v = _num(ev.get(k))
            if not math.isnan(v):
                break
    return v


def _whitebox_points(groups: Sequence[Group], info: MetricInfo):
    """(group, name, base, eps, steps, norm, acc) for every white-box evaluation of a finished run."""
    wb = set(info.whitebox)
    for g in groups:
        for r in g.finished:
            for name, ev in r.evaluations.items():
                kind = ev.get("kind")
                if kind is not None and kind != "whitebox":
                    continue
                if kind is None and f"{name}_acc" not in wb:
                    continue
                acc = _eval_acc(r, name, ev)
                if math.isnan(acc):
                    continue
                steps = _num(ev.get("steps"))
                yield (g, name, _eval_base(name, ev), _num(ev.get("eps")),
                       None if math.isnan(steps) else int(steps), str(ev.get("norm", "")), acc)


def _line_label(g: Group, many_contexts: bool, extra: str = "") -> str:
    d = dict(zip(GROUP_KEYS, g.key))
    lab = g.label
    if many_contexts:
        lab += f" [{d['dataset']}/{d['arch']}/{d['train_method']} {fmt_eps(d['train_eps'])}]"
    return lab + (f" {extra}" if extra else "")


def _save(fig, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".png", dir=str(path.parent))
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _figure(title: str):
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _sweep_lines(points, vary: str):
    """{(group, family): {x: [acc, ...]}} for the families whose `vary` ('eps' or 'steps') takes ≥2 values."""
    fam_x: Dict[Tuple, set] = {}
    data: Dict[Tuple, Dict[float, List[float]]] = {}
    for g, name, base, eps, steps, norm, acc in points:
        if vary == "eps":
            if math.isnan(eps):
                continue
            fam, x = (base, steps, norm), eps
        else:
            if steps is None:
                continue
            fam, x = (base, None if math.isnan(eps) else round(eps, 10), norm), steps
        fam_x.setdefault(fam, set()).add(x)
        data.setdefault((g.key, fam), {}).setdefault(x, []).append(acc)
    sweeps = {f for f, xs in fam_x.items() if len(xs) >= 2}
    return {k: v for k, v in data.items() if k[1] in sweeps}, sweeps


def write_plots(df: pd.DataFrame, groups: Sequence[Group], info: MetricInfo, out_dir: Path) -> Dict[str, Path]:
    written: Dict[str, Path] = {}
    by_key = {g.key: g for g in groups}
    colour = {g.key: f"C{i % 10}" for i, g in enumerate(groups)}
    contexts = {tuple(g.key[i] for i in (0, 1, 4, 5)) for g in groups if g.finished}
    many = len(contexts) > 1

    # robust vs clean: one point per model
    robust = strongest_whitebox(info, df) or ("worst_case_acc" if "worst_case_acc" in info.names else None)
    if robust and "clean_acc_mean" in df:
        pts = df[df["clean_acc_mean"].notna() & df[f"{robust}_mean"].notna()]
        if len(pts):
            fig, ax = _figure(f"{metric_title(robust)} vs clean accuracy")
            for _, r in pts.iterrows():
                g = by_key[r["_gkey"]]
                xe = None if _isnan(r["clean_acc_std"]) else r["clean_acc_std"]
                ye = None if _isnan(r[f"{robust}_std"]) else r[f"{robust}_std"]
                ax.errorbar(r["clean_acc_mean"], r[f"{robust}_mean"], xerr=xe, yerr=ye, fmt="o", capsize=3,
                            color=colour[g.key])
                ax.annotate(_line_label(g, many), (r["clean_acc_mean"], r[f"{robust}_mean"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.set_xlabel("clean accuracy (%)")
            ax.set_ylabel(f"{metric_title(robust)} accuracy (%)")
            path = out_dir / PLOT_FILES["plot_robust_vs_clean"]
            _save(fig, path)
            written["plot_robust_vs_clean"] = path

    points = list(_whitebox_points(groups, info))
    for vary, key, xlabel in (("eps", "plot_acc_vs_eps", "eps (L_inf, /255)"),
                              ("steps", "plot_acc_vs_steps", "attack steps")):
        lines, sweeps = _sweep_lines(points, vary)
        if not lines:
            continue
        fig, ax = _figure(f"accuracy vs {vary}")
        for (gkey, fam), xs in sorted(lines.items(), key=lambda kv: (_sortable(kv[0][0]), str(kv[0][1]))):
            x = sorted(xs)
            y = [float(np.mean(xs[v])) for v in x]
            if vary == "eps":
                x = [v * 255 for v in x]
                extra = fam[0] + (f"-{fam[1]}" if fam[1] else "") if len(sweeps) > 1 else ""
            else:
                extra = f"{fam[0]} eps {fmt_eps(fam[1])}" if len(sweeps) > 1 else ""
            ax.plot(x, y, marker="o", color=colour[gkey], label=_line_label(by_key[gkey], many, extra))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize="small")
        path = out_dir / PLOT_FILES[key]
        _save(fig, path)
        written[key] = path

    # SimBA success vs queries: mean curve over seeds per (model, evaluator)
    curves: Dict[Tuple, List[Tuple[np.ndarray, np.ndarray]]] = {}
    for g in groups:
        for r in g.finished:
            for name, ev in r.evaluations.items():
                c = ev.get("curve")
                if not isinstance(c, dict):
                    continue
                try:
                    q = np.asarray(c.get("queries"), dtype=float)
                    s = np.asarray(c.get("success_rate"), dtype=float)
                except (TypeError, ValueError):
                    continue
                if q.ndim != 1 or q.shape != s.shape or len(q) == 0:
                    continue
                order = np.argsort(q, kind="stable")
                curves.setdefault((g.key, name), []).append((q[order], s[order]))
    if curves:
        names = {k[1] for k in curves}
        fig, ax = _figure("SimBA success rate vs queries")
        for (gkey, name), cs in sorted(curves.items(), key=lambda kv: (_sortable(kv[0][0]), kv[0][1])):
            grid = np.unique(np.concatenate([q for q, _ in cs]))
            mean = np.mean([np.interp(grid, q, s) for q, s in cs], axis=0)
            ax.plot(grid, mean, color=colour[gkey],
                    label=_line_label(by_key[gkey], many, name if len(names) > 1 else ""))
        ax.set_xlabel("queries")
        ax.set_ylabel("success rate (%)")
        ax.legend(fontsize="small")
        path = out_dir / PLOT_FILES["plot_simba_curve"]
        _save(fig, path)
        written["plot_simba_curve"] = path
    return written


# --------------------------------------------------------------------------- entry points


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=path.suffix, dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def build_leaderboard(results_dir, out_dir=None, rank_by: Optional[str] = None) -> Dict[str, Path]:
    """Build the leaderboard of RESULTS_DIR's records into out_dir (default: results_dir).

    Returns {"runs_csv", "csv", "md", and "plot_*" for each plot written: path}.
    Raises FileNotFoundError if results_dir does not exist, ValueError for an unknown rank_by.
    Unreadable records are skipped with a LeaderboardWarning.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} does not exist (expected RESULTS_DIR/runs/*/record.json)")
    out = Path(out_dir) if out_dir is not None else results_dir
    out.mkdir(parents=True, exist_ok=True)

    runs, skipped = load_runs(results_dir)
    info = discover_metrics(runs)
    groups = make_groups(runs, info)
    df = groups_frame(groups, info)
    rank_metric = choose_rank_metric(info, df, rank_by)
    df = rank_frame(df, rank_metric)

    written: Dict[str, Path] = {}
    paths = {"runs_csv": out / "leaderboard_runs.csv", "csv": out / "leaderboard.csv", "md": out / "leaderboard.md"}
    _write_text(paths["runs_csv"], runs_frame(runs, info, results_dir).to_csv(index=False))
    _write_text(paths["csv"], df.drop(columns=["_gkey"]).to_csv(index=False))
    _write_text(paths["md"], render_markdown(df, groups, info, rank_metric, skipped, results_dir,
                                             ranked_by_default=rank_by is None))
    written.update(paths)
    # Drop plots of an earlier build that this data no longer supports.
    plots = write_plots(df, groups, info, out)
    for key, name in PLOT_FILES.items():
        if key not in plots and (out / name).exists():
            (out / name).unlink()
    written.update(plots)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m robustbench_convnorm.leaderboard",
                                description="Build leaderboard tables and plots from RESULTS_DIR/runs/*/record.json.")
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.add_argument("--rank-by", metavar="METRIC", default=None,
                   help="metric to rank by, e.g. pgd20_acc, clean_acc, simba_success_rate "
                        "(default: the strongest white-box attack's accuracy)")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: RESULTS_DIR)")
    args = p.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LeaderboardWarning)
        code, written = _run_cli(args)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    for path in written.values():
        print(path)
    return code


def _run_cli(args) -> Tuple[int, Dict[str, Path]]:
    try:
        return 0, build_leaderboard(args.results_dir, args.out, args.rank_by)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, {}


if __name__ == "__main__":
    sys.exit(main())
