"""Model entries for other leaderboards.

``robustbench``: one JSON per model in RobustBench's model-info layout
(``<out>/robustbench/<dataset>/<threat model>/<model id>.json``) with its
fields (``name``, ``architecture``, ``eps``, ``clean_acc``, ``autoattack_acc``,
...) as numbers, not strings, plus what RobustBench has no field for: the
accuracy actually used as robust accuracy when AutoAttack did not run, the
AutoAttack version that ran, the data note, the seeds and the intervals.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import atomic
from ..registry import Registry
from .board import Leaderboard
from .cells import isnan
from .groups import Group
from .metrics import evaluation_of
from .ranking import strongest_whitebox
from .records import num
from .settings import describe

EXPORTERS: Registry = Registry("export format")


def _number(v: Any) -> Optional[float]:
    return None if isnan(v) else round(float(v), 4)


def _autoattack_metric(lb: Leaderboard, g: Group) -> Optional[str]:
    """The AutoAttack accuracy of this model: the standard version's if it ran, else any other version's."""
    found = []
    for m in lb.info.whitebox:
        for r in g.finished:
            ev = r.evaluations.get(evaluation_of(r, m) or "", {})
            if m in r.metrics and (ev.get("type") == "autoattack" or m.startswith("autoattack")):
                found.append((ev.get("version") != "standard", m))
                break
    return min(found)[1] if found else None


def _evaluation(g: Group, metric: Optional[str]) -> Dict[str, Any]:
    for r in g.finished:
        name = evaluation_of(r, metric) if metric else None
        if name:
            return r.evaluations[name]
    return {}


def model_info(lb: Leaderboard, row, g: Group) -> Dict[str, Any]:
    aa = _autoattack_metric(lb, g)
    robust = aa or strongest_whitebox(lb.info, lb.df) or lb.rank_metric
    ev = _evaluation(g, robust)
    eps = num(ev.get("eps"))
    ctx = g.context
    entry: Dict[str, Any] = {
        # RobustBench's ModelInfo fields
        "link": None, "name": g.label, "authors": None, "additional_data": False, "number_forward_passes": 1,
        "dataset": ctx["dataset"], "venue": "", "architecture": ctx["arch"],
        "eps": _number(eps if not math.isnan(eps) else ctx["train_eps"]),
        "clean_acc": _number(row.get("clean_acc_mean")), "reported": None,
        "autoattack_acc": _number(row.get(f"{aa}_mean")) if aa else None,
        "footnote": None,
        # what RobustBench has no field for
        "threat_model": str(ev.get("norm") or "Linf"),
        "autoattack_version": (str(_evaluation(g, aa).get("version")) if aa and _evaluation(g, aa).get("version")
                               else None),
        "robust_acc": _number(row.get(f"{robust}_mean")) if robust else None,
        "robust_metric": robust,
        "robust_attack": describe(robust, lb.settings, lb.info) if robust else None,
        "data_note": row.get("data_note") or None,
        "normalizer": ctx["normalizer"], "batchnorm": bool(ctx["batchnorm"]), "train_method": ctx["train_method"],
        "train_eps": _number(ctx["train_eps"]), "variant": g.variant or None, "model_id": g.model_id,
        "seeds": sorted(r.seed for r in g.finished if r.seed is not None),
        "n_test_examples": _number(ev.get("n")) if ev.get("n") is not None else None,
        "rank": None if isnan(row.get("rank")) else int(row["rank"]),
        "accuracies": {}, "flags": [f for f in (row.get("flags") or "").split(";") if f],
        "status": row.get("status"), "run_ids": sorted(r.run_id for r in g.finished),
        # RobustBench's own `unreliable` field: the evaluation failed a severe sanity check
        # (robustbench_convnorm/reliability.py); the flags say which
        "unreliable": bool(row.get("unreliable")),
        "unreliable_flags": [f for f in (row.get("unreliable_flags") or "").split(";") if f],
        "generated_by": "robustbench_convnorm.leaderboard",
    }
    if aa is None:
        entry["footnote"] = (f"AutoAttack was not run; robust_acc is {lb.info.title(robust)}." if robust
                             else "AutoAttack was not run.")
    for m in lb.info.names:  # table.metric_stats: the t interval where the metric has two or more seeds, else Wilson's
        if m.endswith("_acc") and not isnan(row.get(f"{m}_mean")):
            entry["accuracies"][m] = {"mean": _number(row[f"{m}_mean"]), "std": _number(row[f"{m}_std"]),
                                      "ci95": [_number(row[f"{m}_ci_lo"]), _number(row[f"{m}_ci_hi"])],
                                      "interval": "wilson" if isnan(row[f"{m}_std"]) else "t over seeds"}
    return entry


def _safe(name: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(name)) or "_"


@EXPORTERS.register("robustbench")
def export_robustbench(lb: Leaderboard, out: Path) -> List[Path]:
    written = []
    for _, row in lb.df.iterrows():
        g = lb.group(row["_gkey"])
        if not g.finished:
            continue
        entry = model_info(lb, row.to_dict(), g)
        path = out / "robustbench" / _safe(entry["dataset"]) / _safe(entry["threat_model"]) / f"{_safe(g.model_id)}.json"
        written.append(atomic.write_json(path, entry))
    return written


def export(lb: Leaderboard, name: str, out: Path) -> List[Path]:
    """Run the exporter registered as `name` (ValueError naming the closest one if unknown)."""
    return EXPORTERS.get(name)(lb, out)
