"""Runs -> models: one row per trained configuration, with seed bookkeeping.

A model is one model identity (identity.py: everything the run id hashes but
the seed), so two runs that differ in anything they were trained with never
share a row. Models that share (dataset, arch, normalizer, batchnorm, method,
eps) but differ elsewhere get a readable variant made of the settings that
tell them apart (``epochs=1``, ``lr=0.01``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Sequence, Tuple

from .. import identity
from ..records import EXTERNAL_METHOD
from .metrics import MetricInfo
from .records import Run

GROUP_KEYS = ("dataset", "arch", "normalizer", "batchnorm", "train_method", "train_eps")
# Models that share a context are directly comparable (one paper-layout table each).
CONTEXT_KEYS = ("dataset", "arch", "train_method", "train_eps")
# Overrides are applied to the config, so their effect shows in other keys; they
# are named only when nothing else tells two models apart.
_OVERRIDES = ".overrides."


def sortable(key: Tuple) -> Tuple:
    return tuple((v is None, "" if v is None else v) for v in key)


def model_label(normalizer, batchnorm: bool, variant: str = "") -> str:
    """normalizer(+BN) [variant]: 'convnorm+BN', 'sn', 'oni [epochs=1]'. A normalizer
    labelled 'bn' (plain conv + BN, the paper's "BN" column) stays 'bn'."""
    name = normalizer or "?"
    bn = "+BN" if batchnorm and name.lower() not in ("bn", "batchnorm") else ""
    return f"{name}{bn}" + (f" [{variant}]" if variant else "")


def txt(v: Any) -> str:
    return "?" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def seeds_text(seeds: Iterable[Any]) -> str:
    seeds = ["?" if s is None else s for s in seeds]
    return ",".join(str(s) for s in sorted(seeds, key=lambda s: (isinstance(s, str), str(s) if isinstance(s, str) else s)))


def value_text(v: Any) -> str:
    """A config value as a reader would type it: 0.01, true, [2, 2], cosine."""
    if isinstance(v, float):
        return format(v, ".6g")
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, default=str)


@dataclass
class Group:
    key: Tuple
    runs: List[Run]
    reps: Dict[Any, Run] = field(default_factory=dict)  # seed (or run_id) -> the record that counts
    duplicates: Dict[Any, int] = field(default_factory=dict)  # seed -> number of records
    expected: List[int] = field(default_factory=list)
    variant: str = ""
    label: str = ""
    notes: List[str] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        ds, arch, norm, bn, method = (txt(v) for v in self.key[:5])
        return f"{ds}-{arch}-{norm}{'-bn' if self.key[3] else ''}-{method}-{self.key[6]}"

    @property
    def finished(self) -> List[Run]:
        return [r for r in self.reps.values() if r.status == "finished"]

    @property
    def failed(self) -> List[Run]:
        return [r for r in self.reps.values() if r.status == "failed"]

    @property
    def unfinished(self) -> List[Run]:
        return [r for r in self.reps.values() if r.status not in ("finished", "failed")]

    @property
    def missing(self) -> List[int]:
        return [s for s in self.expected if s not in self.reps]

    @property
    def context(self) -> Dict[str, Any]:
        d = dict(zip(GROUP_KEYS, self.key))
        d["train_eps"] = next((r.train_eps for r in self.runs if not math.isnan(r.train_eps)), math.nan)
        return d


def pick(records: List[Run]) -> Run:
    """The record that counts for one seed: the newest finished, else the newest running, else the newest."""
    rank = {"finished": 2, "failed": 0}
    return max(records, key=lambda r: (rank.get(r.status, 1), r.created, str(r.path)))


def variants(groups: Sequence[Group]) -> Dict[Tuple, str]:
    """key -> 'k=v, ...': the identity settings that differ between models of one
    (dataset, arch, normalizer, batchnorm, method, eps); '' where there is one model."""
    by_head: Dict[Tuple, List[Group]] = {}
    for g in groups:
        by_head.setdefault(g.key[:6], []).append(g)
    out: Dict[Tuple, str] = {}
    for members in by_head.values():
        if len(members) == 1:
            out[members[0].key] = ""
            continue
        idents = [g.runs[0].identity for g in members]
        keys = sorted({k for ident in idents for k in ident})
        differ = [k for k in keys if len({value_text(ident.get(k, "∅")) for ident in idents}) > 1]
        main = [k for k in differ if _OVERRIDES not in f".{k}"]
        labels = _labels(members, idents, main)
        if not main or len(set(labels.values())) < len(members):
            labels = _labels(members, idents, differ)
        out.update(labels)
    return out


def _names(keys: List[str]) -> Dict[str, str]:
    """Readable names: the shortest unambiguous tail ('lr', 'kernel'); an overridden
    setting is named as such ('override lr')."""
    main = [k for k in keys if _OVERRIDES not in f".{k}"]
    tails = {k: k.split(_OVERRIDES, 1)[1] for k in keys if k not in main}
    names = identity.short_names(main)
    over = identity.short_names(set(tails.values()))
    names.update({k: f"override {over[t]}" for k, t in tails.items()})
    return names


def _labels(members, idents, keys) -> Dict[Tuple, str]:
    names = _names(keys)
    ordered = sorted(keys, key=lambda k: (k in names and names[k].startswith("override "), k))
    return {g.key: ", ".join(f"{names[k]}={value_text(ident[k])}" for k in ordered if k in ident)
            for g, ident in zip(members, idents)}


def make_groups(runs: Sequence[Run], info: MetricInfo) -> List[Group]:
    by_key: Dict[Tuple, List[Run]] = {}
    for r in runs:
        by_key.setdefault(r.key, []).append(r)
    # run records hold only their own seed in config.seeds; the grid's seeds are
    # the union of every configured and every seen seed of the trained runs under
    # RESULTS_DIR. An outside model is one evaluation: it expects its own seeds
    # alone, and its seed is not one the trained models miss.
    trained = [r for r in runs if r.key[4] != EXTERNAL_METHOD]
    expected = {r.seed for r in trained if r.seed is not None}
    for r in trained:
        expected.update(r.expected_seeds or ())

    def expected_of(members: List[Run]) -> List:
        if members[0].key[4] != EXTERNAL_METHOD:
            return sorted(expected)
        return sorted({r.seed for r in members if r.seed is not None})
    groups = [Group(key=key, runs=by_key[key], expected=expected_of(by_key[key]))
              for key in sorted(by_key, key=sortable)]
    labels = variants(groups)
    for g in groups:
        by_seed: Dict[Any, List[Run]] = {}
        for r in g.runs:
            by_seed.setdefault(r.seed if r.seed is not None else f"run {r.run_id}", []).append(r)
        for s, recs in by_seed.items():
            g.reps[s] = pick(recs)
            if len(recs) > 1:
                g.duplicates[s] = len(recs)
        g.variant = labels.get(g.key, "")
        g.label = model_label(g.key[2], g.key[3], g.variant)
        g.notes = status_notes(g, info)
    return groups


def duplicates_text(g: Group) -> str:
    """'2 records for seed 0 (the newest finished counts)', or ''."""
    if not g.duplicates:
        return ""
    parts = [f"{n} records for seed {txt(s)}" for s, n in sorted(g.duplicates.items(), key=lambda kv: str(kv[0]))]
    return "; ".join(parts) + " (the newest finished counts)"


def status_notes(g: Group, info: MetricInfo) -> List[str]:
    """Failures with their reasons, unfinished and missing seeds, duplicates, partial metrics."""
    notes = []
    for r in sorted(g.failed, key=lambda r: str(r.seed)):
        where = f" at epoch {r.error_epoch}" if r.error_epoch not in (None, "") else ""
        notes.append(f"seed {txt(r.seed)} failed{where}: {r.error_reason or 'no reason recorded'}")
    for r in sorted(g.unfinished, key=lambda r: str(r.seed)):
        notes.append(f"seed {txt(r.seed)} {r.status} (not finished)")
    if g.missing:
        many = len(g.missing) > 1
        notes.append(f"seed{'s' if many else ''} {seeds_text(g.missing)} {'have' if many else 'has'} no record")
    if g.duplicates:
        notes.append(f"several records for seed(s) {seeds_text(g.duplicates)}; the newest finished one counts")
    fin = g.finished
    if len(fin) > 1:
        for m in info.names:
            have = sum(not math.isnan(r.value(m)) for r in fin)
            if 0 < have < len(fin):
                notes.append(f"{m} from {have} of {len(fin)} finished seeds")
    return notes


def status_text(g: Group) -> str:
    """'ok', or what is wrong: '2/3 finished, 1 failed (seed 2), missing seeds 4'; re-runs named too."""
    n_fin, n_fail, n_unf = len(g.finished), len(g.failed), len(g.unfinished)
    n_expected = len(set(g.expected) | set(g.reps))
    parts = []
    if n_fail or n_unf or g.missing or n_fin < n_expected:
        parts.append(f"{n_fin}/{n_expected} finished")
    if n_fail:
        parts.append(f"{n_fail} failed (seed {seeds_text(r.seed for r in g.failed)})")
    if n_unf:
        parts.append(f"{n_unf} not finished (seed {seeds_text(r.seed for r in g.unfinished)})")
    if g.missing:
        parts.append(f"missing seeds {seeds_text(g.missing)}")
    text = ", ".join(parts) if parts else "ok"
    dup = duplicates_text(g)
    return f"{text}; {dup}" if dup else text
