"""ConvNorm paper, Table 9: the mean improvement of the layer-wise condition
number over vanilla, from a finished grid's run records."""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .spectra import COND_FLOOR

__all__ = ["COND_PLACEHOLDER", "PLACEHOLDER_NOTE", "format_table9", "is_placeholder", "load_records",
           "read_records", "record_paths", "table9"]

log = logging.getLogger("robustbench_convnorm.lipschitz")

#: the condition number a channel with an exact zero in its spectrum records (its
#: spectrum is floored at COND_FLOOR times its maximum): 1e6, a stand-in for infinity,
#: not a measurement
COND_PLACEHOLDER = 1.0 / math.sqrt(COND_FLOOR)

PLACEHOLDER_NOTE = (f"n/a: a layer's channel has an exact zero in its spectrum, so its condition number is "
                    f"infinite (recorded as the placeholder {COND_PLACEHOLDER:.0e}); a mean over layers including it "
                    f"is not a number, so such runs are left out of the mean and counted as 'n/a runs'.")


def is_placeholder(value: Any) -> bool:
    """True where a recorded condition number is the stand-in for infinity, not a measurement."""
    return value is not None and float(value) >= COND_PLACEHOLDER * (1 - 1e-6)


def _record_label(rec: Dict[str, Any]) -> str:
    label = str(rec.get("normalizer"))
    opts = rec.get("normalizer_options") or {}
    if opts:
        label += "(" + ",".join(f"{k}={opts[k]}" for k in sorted(opts)) + ")"
    if rec.get("batchnorm"):
        label += "+BN"
    return label


def _setting(rec: Dict[str, Any]) -> tuple:
    return tuple(rec.get(k) for k in ("dataset", "arch", "train_method", "train_eps"))


def table9(records: Iterable[Dict[str, Any]], *, key: str = "channel_cond", baseline: str = "vanilla",
           mode: str = "difference", fallback: Optional[str] = "channel_cond") -> List[Dict[str, Any]]:
    """Mean improvement of the layer-wise condition number over ``baseline``
    (larger is better), from finished run records carrying
    ``record["lipschitz"]`` (``model_report``'s layout).

    Records are grouped by setting (dataset, arch, train_method, train_eps).
    Within a setting, the baseline's per-layer condition number ``key`` is
    averaged over its runs (seeds), preferring baseline runs with the same
    ``batchnorm`` flag as the compared run. A run's improvement is the mean
    over the layers both have (matched by name) of ``cond_baseline -
    cond_run`` (``mode="difference"``) or ``log10(cond_baseline / cond_run)``
    (``mode="log_ratio"``). A layer without ``key`` (e.g.
    ``channel_cond_preaffine`` on a plain conv) uses ``fallback``.

    A layer whose condition number is the placeholder ``COND_PLACEHOLDER``
    (an exact zero in a channel's spectrum: infinite) is never averaged: the
    run (or, for a baseline layer, every run compared with it) is counted in
    ``placeholder_runs`` instead, and a row with no measured run has
    ``mean_improvement`` None.

    Returns:
        One row per (setting, normalizer label): ``mean_improvement``, ``std``
        over runs, ``runs`` (measured), ``placeholder_runs``, and the setting.

    Example::

        >>> print(format_table9(table9(load_records("results/pgd"))))
    """
    def value(layer):
        """The layer's condition number, math.inf where it holds the placeholder (a mean
        over channels is the placeholder's once channel_cond_max is)."""
        name = key if layer.get(key) is not None else fallback
        v = layer.get(name) if name else None
        if v is None:
            return None
        if is_placeholder(v) or (name == "channel_cond" and is_placeholder(layer.get("channel_cond_max"))):
            return math.inf
        return float(v)

    if mode not in ("difference", "log_ratio"):
        raise ValueError(f"mode must be 'difference' or 'log_ratio', got {mode!r}")
    usable = [r for r in records if r.get("status", "finished") == "finished"
              and isinstance(r.get("lipschitz"), dict) and r["lipschitz"].get("layers")]
    by_setting: Dict[tuple, List[Dict[str, Any]]] = defaultdict(list)
    for r in usable:
        by_setting[_setting(r)].append(r)
    rows: List[Dict[str, Any]] = []
    for setting, recs in by_setting.items():
        base = {}
        for bn in (False, True):
            layer_vals: Dict[str, List[float]] = defaultdict(list)
            for r in recs:
                if r.get("normalizer") == baseline and bool(r.get("batchnorm")) == bn:
                    for layer in r["lipschitz"]["layers"]:
                        if value(layer) is not None:
                            layer_vals[layer["name"]].append(value(layer))
            if layer_vals:  # a placeholder in any seed makes the layer's mean inf: never averaged as a number
                base[bn] = {n: sum(v) / len(v) for n, v in layer_vals.items()}
        if not base:
            continue
        per_label: Dict[str, List[float]] = defaultdict(list)
        unmeasured: Dict[str, int] = defaultdict(int)
        for r in recs:
            if r.get("normalizer") == baseline:
                continue
            ref = base.get(bool(r.get("batchnorm"))) or next(iter(base.values()))
            diffs, infinite = [], False
            for layer in r["lipschitz"]["layers"]:
                v, b = value(layer), ref.get(layer["name"])
                if v is None or b is None:
                    continue
                if math.isinf(v) or math.isinf(b):
                    infinite = True
                elif mode == "difference":
                    diffs.append(b - v)
                elif v > 0 and b > 0:
                    diffs.append(math.log10(b / v))
            if infinite:
                unmeasured[_record_label(r)] += 1
            elif diffs:
                per_label[_record_label(r)].append(sum(diffs) / len(diffs))
        for label in sorted(set(per_label) | set(unmeasured)):
            vals = per_label.get(label, [])
            mean = sum(vals) / len(vals) if vals else None
            std = (math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1
                   else 0.0 if vals else None)
            rows.append({"dataset": setting[0], "arch": setting[1], "train_method": setting[2],
                         "train_eps": setting[3], "normalizer": label, "key": key, "mode": mode,
                         "mean_improvement": mean, "std": std, "runs": len(vals),
                         "placeholder_runs": unmeasured.get(label, 0)})
    return rows


def record_paths(results_dir) -> List[Path]:
    """``runs/*/record.json`` under a results directory (or the directory's own
    ``*/record.json`` when it is a ``runs`` folder)."""
    root = Path(results_dir)
    return sorted(root.glob("runs/*/record.json")) or sorted(root.glob("*/record.json"))


def read_records(results_dir) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Every readable record of ``record_paths``, and one line per record
    that is not (unreadable or not a JSON object): ``(records, problems)``."""
    records, problems = [], []
    for p in record_paths(results_dir):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError) as err:
            problems.append(f"{p}: unreadable ({err}); skipped")
            continue
        if not isinstance(rec, dict):
            problems.append(f"{p}: not a JSON object; skipped")
            continue
        records.append(rec)
    return records, problems


def load_records(results_dir) -> List[Dict[str, Any]]:
    """The readable records of ``read_records`` (the others are logged and skipped)."""
    records, problems = read_records(results_dir)
    for line in problems:
        log.warning("lipschitz: %s", line)
    return records


def format_table9(rows: List[Dict[str, Any]]) -> str:
    """``table9``'s rows as a markdown table; a mean with no measured run is "n/a ¹",
    explained under the table, never a number."""
    lines = ["| dataset | arch | train | normalizer | mean improvement | std | runs | n/a runs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["dataset"], r["arch"], r["train_method"], r["normalizer"]]
        cells = [str(c).replace("|", "\\|") for c in cells]
        na = r.get("placeholder_runs") or 0
        mean = "n/a ¹" if r["mean_improvement"] is None else f"{r['mean_improvement']:.3f}"
        std = "–" if r["std"] is None else f"{r['std']:.3f}"
        lines.append(f"| {' | '.join(cells)} | {mean} | {std} | {r['runs']} | {f'{na} ¹' if na else 0} |")
    if any(r.get("placeholder_runs") for r in rows):
        lines += ["", f"¹ {PLACEHOLDER_NOTE}"]
    return "\n".join(lines)
