"""Model entries for other leaderboards.

``robustbench`` writes, under ``<out>/robustbench/``:

- ``model_info/<dataset>/<threat model>/<model id>.json``: exactly RobustBench's
  model-info fields, written the way RobustBench's own files write them (eps
  ``"8/255"``, accuracies as strings ``"82.50"``, ``venue`` ``"N/A"`` so its bibtex
  reader skips an entry with no paper). Only a model whose standard AutoAttack ran
  on a data set RobustBench knows is written here: RobustBench ranks by standard
  AutoAttack, and a PGD number in that field would be read as one.
- ``convnorm_extra/<dataset>/<threat model>/<model id>.json``: what RobustBench has
  no field for (the project's data set name and data note, seeds, intervals, ...).
- ``not_exported.json``: each model left out and why.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

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

#: the project's data set name -> (RobustBench's BenchmarkDataset value, note for its footnote)
ROBUSTBENCH_DATASETS: Dict[str, Tuple[str, Optional[str]]] = {
    "cifar10": ("cifar10", None),
    "cifar100": ("cifar100", None),
    "cifar10-jpeg": ("cifar10", "Evaluated on a JPEG-compressed copy of the CIFAR-10 test set, "
                                "not the official test set."),
}
#: RobustBench's ThreatModel values that AutoAttack can have run under
ROBUSTBENCH_THREAT_MODELS = ("Linf", "L2")
#: the fields of RobustBench's ModelInfo that its leaderboard files carry (robustbench/utils.py)
MODEL_INFO_FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                     "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote")


def _number(v: Any) -> Optional[float]:
    return None if isnan(v) else round(float(v), 4)


def _percent_text(v: float) -> str:
    """An accuracy as RobustBench's files hold it: a string with two decimals, "82.50"."""
    return f"{float(v):.2f}"


def eps_text(eps: float, threat_model: str) -> str:
    """eps as RobustBench writes it: "8/255" for an L-inf radius on the 1/255 grid, else "0.5"."""
    k = eps * 255
    if threat_model == "Linf" and round(k) > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return format(eps, "g")


def _whitebox_evaluation(lb: Leaderboard, g: Group, metric: str) -> Dict[str, Any]:
    for r in g.finished:
        name = evaluation_of(r, metric)
        if name and metric in r.metrics:
            return r.evaluations.get(name, {})
    return {}


def _autoattack_metrics(lb: Leaderboard, g: Group) -> List[Tuple[bool, str]]:
    """(is the standard version, metric) for each AutoAttack accuracy of this model."""
    found = []
    for m in lb.info.whitebox:
        ev = _whitebox_evaluation(lb, g, m)
        if ev and (ev.get("type") == "autoattack" or m.startswith("autoattack")):
            found.append((ev.get("version") == "standard", m))
    return found


def standard_autoattack_metric(lb: Leaderboard, g: Group) -> Optional[str]:
    """The accuracy column of this model's standard AutoAttack, None if that version never ran."""
    return next((m for standard, m in _autoattack_metrics(lb, g) if standard), None)


def _evaluation(g: Group, metric: Optional[str]) -> Dict[str, Any]:
    for r in g.finished:
        name = evaluation_of(r, metric) if metric else None
        if name:
            return r.evaluations[name]
    return {}


def extra_fields(lb: Leaderboard, row, g: Group) -> Dict[str, Any]:
    """What the project knows about the model beyond RobustBench's fields."""
    aa = standard_autoattack_metric(lb, g)
    other_aa = [m for standard, m in _autoattack_metrics(lb, g) if not standard]
    robust = aa or strongest_whitebox(lb.info, lb.df) or lb.rank_metric
    ev = _evaluation(g, robust)
    ctx = g.context
    entry: Dict[str, Any] = {
        "model_id": g.model_id, "label": g.label, "dataset": ctx["dataset"], "architecture": ctx["arch"],
        "threat_model": str(ev.get("norm") or "Linf"),
        "eps": _number(num(ev.get("eps"))),
        "autoattack_version": (str(_evaluation(g, aa).get("version")) if aa else None),
        "other_autoattack_versions": {m: _evaluation(g, m).get("version") for m in other_aa},
        "robust_acc": _number(row.get(f"{robust}_mean")) if robust else None,
        "robust_metric": robust,
        "robust_attack": describe(robust, lb.settings, lb.info) if robust else None,
        "data_note": row.get("data_note") or None,
        "normalizer": ctx["normalizer"], "batchnorm": bool(ctx["batchnorm"]), "train_method": ctx["train_method"],
        "train_eps": _number(ctx["train_eps"]), "variant": g.variant or None,
        "seeds": sorted(r.seed for r in g.finished if r.seed is not None),
        "n_test_examples": _number(ev.get("n")) if ev.get("n") is not None else None,
        "rank": None if isnan(row.get("rank")) else int(row["rank"]),
        "accuracies": {}, "flags": [f for f in (row.get("flags") or "").split(";") if f],
        "status": row.get("status"), "run_ids": sorted(r.run_id for r in g.finished),
        # the evaluation failed a severe sanity check (robustbench_convnorm/reliability.py); the flags
        # say which. RobustBench's ModelInfo has no field for it: model_info's footnote says it there
        "unreliable": bool(row.get("unreliable")),
        "unreliable_flags": [f for f in (row.get("unreliable_flags") or "").split(";") if f],
        "generated_by": "robustbench_convnorm.leaderboard",
    }
    for m in lb.info.names:  # table.metric_stats: the t interval where the metric has two or more seeds, else Wilson's
        if m.endswith("_acc") and not isnan(row.get(f"{m}_mean")):
            entry["accuracies"][m] = {"mean": _number(row[f"{m}_mean"]), "std": _number(row[f"{m}_std"]),
                                      "ci95": [_number(row[f"{m}_ci_lo"]), _number(row[f"{m}_ci_hi"])],
                                      "interval": "wilson" if isnan(row[f"{m}_std"]) else "t over seeds"}
    return entry


def why_not_exported(lb: Leaderboard, row, g: Group) -> Optional[str]:
    """None if the model can be a RobustBench entry, else the reason it cannot."""
    dataset = str(g.context["dataset"])
    if dataset not in ROBUSTBENCH_DATASETS:
        return (f"data set {dataset!r} is not one of RobustBench's "
                f"({', '.join(sorted({v for v, _ in ROBUSTBENCH_DATASETS.values()}))})")
    aa = standard_autoattack_metric(lb, g)
    if aa is None:
        return "standard AutoAttack did not run (RobustBench ranks by it; no other attack stands in)"
    ev = _evaluation(g, aa)
    norm = str(ev.get("norm") or "Linf")
    if norm not in ROBUSTBENCH_THREAT_MODELS:
        return f"AutoAttack ran under {norm}, not a RobustBench threat model ({', '.join(ROBUSTBENCH_THREAT_MODELS)})"
    if math.isnan(num(ev.get("eps"))):
        return "the AutoAttack evaluation does not record its eps"
    if isnan(row.get(f"{aa}_mean")) or isnan(row.get("clean_acc_mean")):
        return "clean or AutoAttack accuracy missing"
    return None


def model_info(lb: Leaderboard, row, g: Group) -> Dict[str, Any]:
    """RobustBench's model-info entry for a model that why_not_exported lets through."""
    aa = standard_autoattack_metric(lb, g)
    ev = _evaluation(g, aa)
    norm = str(ev.get("norm") or "Linf")
    dataset, data_footnote = ROBUSTBENCH_DATASETS[str(g.context["dataset"])]
    notes = [n for n in (data_footnote, row.get("data_note") or None) if n]
    if row.get("unreliable"):  # RobustBench's files have no such field: its footnote is what its page shows
        notes.insert(0, f"Unreliable evaluation (failed sanity checks: {row.get('unreliable_flags')}); "
                        f"the robust accuracy overstates robustness.")
    entry: Dict[str, Any] = {
        "link": "", "name": g.label, "authors": "", "additional_data": False, "number_forward_passes": 1,
        "dataset": dataset, "venue": "N/A", "architecture": str(g.context["arch"]),
        "eps": eps_text(num(ev.get("eps")), norm),
        "clean_acc": _percent_text(row["clean_acc_mean"]),
        "reported": "",  # RobustBench's field for a paper's own number; no paper here
        "autoattack_acc": _percent_text(row[f"{aa}_mean"]),
    }
    if notes:
        entry["footnote"] = " ".join(dict.fromkeys(notes))
    return entry


def _safe(name: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(name)) or "_"


@EXPORTERS.register("robustbench")
def export_robustbench(lb: Leaderboard, out: Path) -> List[Path]:
    root = out / "robustbench"
    written, skipped = [], []
    for _, row in lb.df.iterrows():
        g = lb.group(row["_gkey"])
        if not g.finished:
            continue
        row = row.to_dict()
        reason = why_not_exported(lb, row, g)
        if reason:
            skipped.append({"model_id": g.model_id, "label": g.label, "dataset": g.context["dataset"],
                            "reason": reason, "unreliable": bool(row.get("unreliable")),
                            "unreliable_flags": [f for f in (row.get("unreliable_flags") or "").split(";") if f]})
            continue
        entry = model_info(lb, row, g)
        where = Path(_safe(entry["dataset"])) / _safe(str(_evaluation(g, standard_autoattack_metric(lb, g))
                                                          .get("norm") or "Linf")) / f"{_safe(g.model_id)}.json"
        written.append(atomic.write_json(root / "model_info" / where, entry))
        written.append(atomic.write_json(root / "convnorm_extra" / where, extra_fields(lb, row, g)))
    written.append(atomic.write_json(root / "not_exported.json", skipped))
    return written


def export(lb: Leaderboard, name: str, out: Path) -> List[Path]:
    """Run the exporter registered as `name` (ValueError naming the closest one if unknown)."""
    return EXPORTERS.get(name)(lb, out)
