"""The evaluation settings behind a table: what a reader must know to trust or
reproduce a number (data, eps, attack steps and step size, examples, SimBA and
AutoAttack settings), gathered from the finished runs' records."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .cells import fmt_eps
from .groups import Group, value_text
from .metrics import MetricInfo, evaluation_of
from .records import Run, num

# The settings worth showing per evaluation type, in this order.
_SHOWN = ("type", "kind", "eps", "norm", "steps", "step", "random_start", "restarts", "n", "version",
          "basis", "n_images", "max_iters", "score", "library")


@dataclass
class EvalSetting:
    name: str
    values: Dict[str, str] = field(default_factory=dict)  # setting -> text ('a | b' where runs differ)


@dataclass
class Settings:
    datasets: List[str]
    data_notes: List[str]
    n_test: List[str]  # number of evaluated test examples (clean evaluation)
    evaluations: List[EvalSetting]
    autoattack_versions: List[str]
    train: List[str]  # 'free, eps 0.1, 6 epochs' per context

    def evaluation(self, name: str) -> Optional[EvalSetting]:
        return next((e for e in self.evaluations if e.name == name), None)


def _text(key: str, v: Any) -> str:
    if key == "eps" or key == "step":
        x = num(v)
        return fmt_eps(x) if not math.isnan(x) else value_text(v)
    return value_text(v)


def collect(groups: Sequence[Group], info: MetricInfo) -> Settings:
    runs: List[Run] = [r for g in groups for r in g.finished]
    datasets = sorted({str(g.key[0]) for g in groups if g.key[0] is not None})
    notes = sorted({r.data_note for g in groups for r in g.runs if r.data_note})
    per_eval: Dict[str, Dict[str, List[str]]] = {}
    for r in runs:
        for name, ev in r.evaluations.items():
            slot = per_eval.setdefault(name, {})
            for key in _SHOWN:
                if ev.get(key) is not None:
                    t = _text(key, ev[key])
                    if t not in slot.setdefault(key, []):
                        slot[key].append(t)
    order = {m: i for i, m in enumerate(info.names)}

    def rank(name: str) -> float:
        hits = [order[m] for m in order if m.startswith(f"{name}_")]
        return min(hits) if hits else math.inf

    evaluations = [EvalSetting(name, {k: " | ".join(v) for k, v in slot.items()})
                   for name, slot in sorted(per_eval.items(), key=lambda kv: (rank(kv[0]), kv[0]))]
    n_test = sorted({value_text(r.evaluations[n].get("n")) for r in runs
                     for n in [evaluation_of(r, "clean_acc")] if n and r.evaluations[n].get("n") is not None})
    versions = sorted({str(ev["version"]) for r in runs for ev in r.evaluations.values()
                       if ev.get("type") == "autoattack" and ev.get("version") is not None})
    train = []
    for g in groups:
        cfg = g.runs[0].raw.get("config") if isinstance(g.runs[0].raw.get("config"), dict) else {}
        tr = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
        ctx = g.context
        parts = [str(ctx["train_method"] or "?")]
        if ctx["train_method"] != "natural":
            parts.append(f"eps {fmt_eps(ctx['train_eps'])}")
        if tr.get("epochs") is not None:
            parts.append(f"{tr['epochs']} epoch{'' if tr['epochs'] == 1 else 's'}")
        if tr.get("replays") is not None and ctx["train_method"] == "free":
            parts.append(f"m={tr['replays']}")
        t = ", ".join(parts)
        if t not in train:
            train.append(t)
    return Settings(datasets=datasets, data_notes=notes, n_test=n_test, evaluations=evaluations,
                    autoattack_versions=versions, train=train)


def describe(metric: str, settings: Settings, info: MetricInfo) -> str:
    """One phrase for captions: 'PGD-20 (L_inf eps 0.1, 20 steps of 0.025)'."""
    name = metric
    for suffix in ("_acc", "_success_rate", "_avg_queries"):
        if metric.endswith(suffix):
            name = metric[: -len(suffix)]
    ev = settings.evaluation(name)
    title = info.title(metric)
    if ev is None:
        return title
    v = ev.values
    bits = []
    if "eps" in v:
        bits.append(f"{v.get('norm', 'Linf').replace('Linf', 'L∞')} eps {v['eps']}")
    if "steps" in v and v.get("type") not in ("fgsm",):
        bits.append(f"{v['steps']} steps" + (f" of {v['step']}" if "step" in v else ""))
    if v.get("type") == "simba":
        bits.append(f"{v.get('basis', '?')} basis, step {v.get('step', '?')}, {v.get('n_images', '?')} images, "
                    f"at most {v.get('max_iters', '?')} iterations")
    if "version" in v:
        bits.append(f"version {v['version']}")
    return f"{title} ({', '.join(bits)})" if bits else title


def data_phrase(settings: Settings) -> str:
    """'360 test images of digits (scikit-learn digits (8x8 grayscale))'."""
    n = " or ".join(settings.n_test) if settings.n_test else "?"
    data = ", ".join(settings.datasets) or "?"
    note = f" ({'; '.join(settings.data_notes)})" if settings.data_notes else ""
    return f"{n} test images of {data}{note}"
