"""Which metrics the records hold, in which order, under which title, and how
to find each one's evaluation, example count and per-example column."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .records import COST_METRICS, Run, num

# Metrics that are better when lower; every other metric ranks higher-is-better
# (plus every `*success_rate`: an attack's success is the model's failure).
LOWER_IS_BETTER = {"train_seconds_per_epoch", "params", "lip_product_log10", "mean_layer_spectral_norm",
                   "train_seconds", "peak_memory_mb", "eval_seconds"}
# The worst case over attacks: per example, survived every attack (white-box and
# black-box), and the white-box-only variant.
WORST_CASE = ("worst_case_whitebox_acc", "worst_case_acc")
#: the default ranking metric (ranking.choose_rank_metric): per example, survived
#: every white-box attack inside the threat model's ball
WORST_CASE_WHITEBOX = "worst_case_whitebox_acc"
# Names of `*_acc` metrics that are not white-box attacks, when the record does
# not say so through evaluations[name]["kind"].
_NOT_WHITEBOX_PREFIXES = ("clean", "worst_case", "simba", "noise", "random", "blackbox", "square")
TAIL = ["train_seconds", "train_seconds_per_epoch", "train_images_per_second", "peak_memory_mb", "eval_seconds",
        "params", "lip_product_log10", "mean_layer_spectral_norm"]
_FIXED_TITLES = {
    "clean_acc": "clean", "worst_case_acc": "worst case", "worst_case_whitebox_acc": "worst case (white-box)",
    "train_seconds_per_epoch": "s/epoch", "params": "params", "train_seconds": "train s",
    "train_images_per_second": "train img/s", "peak_memory_mb": "peak MiB", "eval_seconds": "eval s",
    "lip_product_log10": "log10 conv-norm product",
    "mean_layer_spectral_norm": "mean layer σ",
}


# The whole network's sound L2 bound (lipschitz/network, issue 21), beside the conv-only product.
NETWORK_BOUND = "lip_network_log10"
LOWER_IS_BETTER.add(NETWORK_BOUND)
TAIL.insert(TAIL.index("lip_product_log10"), NETWORK_BOUND)
_FIXED_TITLES[NETWORK_BOUND] = "log10 network Lip bound (L2)"


def natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _family_rank(name: str) -> int:
    n = name.lower()
    if n.startswith("fgsm"):
        return 0
    if n.startswith("pgd"):
        return 1
    if n.startswith(("autoattack", "aa", "apgd")):
        return 3
    return 2


def eval_base(name: str, ev: dict) -> str:
    """The attack type of an evaluation: its recorded type, else its name's letters."""
    for k in ("type", "attack", "evaluator"):
        if isinstance(ev.get(k), str):
            return ev[k].lower()
    m = re.match(r"[a-z_]*?[a-z]+", name.lower())
    return m.group(0) if m else name.lower()


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric.endswith("success_rate")


def is_proportion(metric: str) -> bool:
    """Accuracies and attack success rates: k of n examples, in percent."""
    return metric.endswith("_acc") or metric.endswith("_success_rate")


@dataclass
class MetricInfo:
    names: List[str]  # every metric column, in display order
    whitebox: List[str]  # `<evaluator>_acc` columns of white-box attacks
    eval_eps: Dict[str, float]  # white-box column -> its eps, when the records say
    blackbox: List[str] = field(default_factory=list)  # black-box evaluator names (SimBA, ...)
    titles: Dict[str, str] = field(default_factory=dict)  # metric -> column title
    certified: List[str] = field(default_factory=list)  # `<evaluator>_acc` of certified evaluators (no attack)

    def title(self, metric: str) -> str:
        return self.titles.get(metric) or metric_title(metric)

    def headline(self) -> List[str]:
        """The metrics the text tables show (the CSVs hold every metric)."""
        bb = [f"{n}_{s}" for n in self.blackbox for s in ("success_rate", "avg_queries")]
        wanted = ["clean_acc", *self.whitebox, *WORST_CASE, *self.certified, *bb, *TAIL]
        return [m for m in wanted if m in self.names]

    def attack_rows(self) -> List[str]:
        """The rows of the paper's layout: clean, the attacks, the worst case, black-box rates."""
        bb = [f"{n}_{s}" for n in self.blackbox for s in ("success_rate", "avg_queries")]
        return [m for m in ["clean_acc", *self.whitebox, *WORST_CASE, *bb] if m in self.names]


def metric_title(m: str, version: Optional[str] = None) -> str:
    if m in _FIXED_TITLES:
        return _FIXED_TITLES[m]
    for suffix, what in (("_success_rate", "success %"), ("_avg_queries", "avg queries"),
                         ("_saturated_frac", "saturated frac")):
        if m.endswith(suffix):
            return f"{_evaluator_title(m[: -len(suffix)])} {what}"
    name = m[: -len("_acc")] if m.endswith("_acc") else m
    mm = re.fullmatch(r"pgd(\d+)(.*)", name)
    if mm:
        return f"PGD-{mm.group(1)}{mm.group(2).replace('_', ' ')}"
    if name.startswith("fgsm"):
        return "FGSM" + name[4:].replace("_", " ")
    title = _evaluator_title(name)
    if version and title.startswith("AutoAttack") and version not in title:
        title = f"AutoAttack ({version})"
    return title


def _evaluator_title(name: str) -> str:
    low = name.lower()
    if low == "simba":
        return "SimBA"
    if low.startswith("simba_"):
        return "SimBA " + name[6:].replace("_", " ")
    if low == "apgd_ce_t" or low.startswith("apgd_ce_t_"):   # AutoAttack's first two attacks, not AutoAttack
        return "APGD-CE+T" + name[9:].replace("_", " ")
    if low in ("autoattack", "aa"):
        return "AutoAttack"
    if low.startswith("autoattack_"):
        return f"AutoAttack ({name[11:].replace('_', ' ')})"
    return name.replace("_", " ")


def discover_metrics(runs: Sequence[Run]) -> MetricInfo:
    seen: Dict[str, None] = {}
    kinds: Dict[str, str] = {}
    eval_eps: Dict[str, float] = {}
    versions: Dict[str, str] = {}
    blackbox: Dict[str, None] = {}
    for r in runs:
        for k in r.metrics:
            seen.setdefault(k)
        for name, ev in r.evaluations.items():
            if isinstance(ev.get("kind"), str):
                kinds.setdefault(name, ev["kind"])
                if ev["kind"] == "blackbox":
                    blackbox.setdefault(name)
            if isinstance(ev.get("version"), str):
                versions.setdefault(f"{name}_acc", ev["version"])
            e = num(ev.get("eps"))
            if not math.isnan(e):
                eval_eps.setdefault(f"{name}_acc", e)
    for m in seen:  # black-box evaluators of records without `kind`
        for suffix in ("_success_rate", "_avg_queries"):
            if m.endswith(suffix) and m[: -len(suffix)] not in kinds:
                blackbox.setdefault(m[: -len(suffix)])

    def is_whitebox(metric: str) -> bool:
        if not metric.endswith("_acc") or metric == "clean_acc" or metric in WORST_CASE:
            return False
        name = metric[: -len("_acc")]
        if name in kinds:
            return kinds[name] == "whitebox"
        return not name.lower().startswith(_NOT_WHITEBOX_PREFIXES)

    whitebox = sorted((m for m in seen if is_whitebox(m)), key=lambda m: (_family_rank(m), natural(m)))
    other_acc = sorted(m for m in seen if m.endswith("_acc") and m not in whitebox
                       and m != "clean_acc" and m not in WORST_CASE)
    bb_names = sorted(blackbox, key=natural)
    bb = [f"{n}_{s}" for n in bb_names for s in ("success_rate", "avg_queries")]
    bb_other = sorted(m for m in seen if any(m.startswith(f"{n}_") for n in bb_names)
                      and m not in bb and m not in other_acc)
    order = ["clean_acc", *whitebox, *WORST_CASE, *other_acc, *bb, *bb_other, *TAIL]
    order += sorted(m for m in seen if m not in order)
    present = set(seen)
    if any(not math.isnan(r.params) for r in runs):
        present.add("params")
    if any("train_seconds_per_epoch" in r.timings for r in runs):
        present.add("train_seconds_per_epoch")
    present.update(m for m in COST_METRICS if any(not math.isnan(r.value(m)) for r in runs))
    names = [m for m in order if m in present]
    titles = {m: metric_title(m, versions.get(m)) for m in names}
    certified = [m for m in other_acc if kinds.get(m[: -len("_acc")]) == "certified" and m in present]
    return MetricInfo(names=names, whitebox=whitebox, eval_eps={k: v for k, v in eval_eps.items() if k in whitebox},
                      blackbox=[n for n in bb_names if any(m.startswith(f"{n}_") for m in names)], titles=titles,
                      certified=certified)


def evaluation_of(run: Run, metric: str) -> Optional[str]:
    """The evaluation a metric comes from: 'pgd20' for pgd20_acc, the clean one for clean_acc."""
    if metric == "clean_acc":
        return next((n for n, ev in run.evaluations.items() if ev.get("kind") == "clean"),
                    "clean" if "clean" in run.evaluations else None)
    for suffix in ("_acc", "_success_rate", "_avg_queries", "_saturated_frac"):
        if metric.endswith(suffix) and metric[: -len(suffix)] in run.evaluations:
            return metric[: -len(suffix)]
    return None


def correct_column(run: Run, metric: str) -> Optional[str]:
    """The per_example.csv column holding this metric's per-example outcome, if it has one."""
    if metric in WORST_CASE:
        return metric[: -len("_acc")] + "_correct"
    if not metric.endswith("_acc"):
        return None
    name = evaluation_of(run, metric)
    return None if name is None else f"{name}_correct"


def example_count(run: Run, metric: str) -> float:
    """How many examples a proportion metric was measured on (NaN if unknown)."""
    if not is_proportion(metric):
        return math.nan
    name = "clean_acc" if metric in WORST_CASE else metric
    ev_name = evaluation_of(run, name)
    ev = run.evaluations.get(ev_name or "", {})
    for k in ("n", "n_attacked"):
        if num(ev.get(k)) > 0:
            return num(ev.get(k))
    table = run.per_example()
    col = f"{ev_name}_correct" if ev_name else correct_column(run, metric)
    if table is not None and col in table.columns:
        return float(table[col].notna().sum())
    for k in ("n_images", "n_examples"):  # what was asked for: the best left when nothing says what ran
        if num(ev.get(k)) > 0:
            return num(ev.get(k))
    return math.nan
