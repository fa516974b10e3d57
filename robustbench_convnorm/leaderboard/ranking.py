"""Which metric ranks the models, their order within each dataset, and whether
each model differs significantly from the one ranked just above it.

The default ranking metric is ``worst_case_whitebox_acc``: per example,
correct on clean and under every white-box attack of the threat model (the
protocol's worst case, attacks/checks.py); no single attack's mean, which
PGD alone overstates and which picks among attacks by noise. A model whose
evaluation raised a severe flag (robustbench_convnorm/reliability.py) is not
ranked: it comes after the ranked models of its dataset, marked unreliable."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from . import stats
from .groups import Group, seeds_text
from .metrics import WORST_CASE_WHITEBOX, MetricInfo, correct_column, example_count, is_proportion, lower_is_better


def _main_eps(info: MetricInfo, df: pd.DataFrame) -> Optional[float]:
    """The eps most white-box columns share (preferring the training eps on a tie)."""
    eps = [round(e, 10) for e in info.eval_eps.values()]
    if not eps:
        return None
    counts = {e: eps.count(e) for e in set(eps)}
    train = df["train_eps"].dropna().tolist()
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
        name = rank_by[: -len("_mean")] if rank_by.endswith("_mean") else rank_by
        for cand in (name, f"{name}_acc"):
            if cand in info.names:
                return cand
        raise ValueError(f"--rank-by {rank_by!r}: no such metric in the records; "
                         f"available: {', '.join(info.names) or '(none)'}")
    if WORST_CASE_WHITEBOX in info.names and df[f"{WORST_CASE_WHITEBOX}_mean"].notna().any():
        return WORST_CASE_WHITEBOX
    # records without the per-example worst case (written before it existed)
    m = strongest_whitebox(info, df)
    if m:
        return m
    fallbacks = ["worst_case_acc", *(f"{n}_success_rate" for n in info.blackbox),
                 *(f"{n}_avg_queries" for n in info.blackbox), "clean_acc"]
    for m in fallbacks:
        if m in info.names and df[f"{m}_mean"].notna().any():
            return m
    return None


def rank_frame(df: pd.DataFrame, metric: Optional[str]) -> pd.DataFrame:
    """Sort and number the models within each dataset by `metric` (ties: clean accuracy, label).
    Unreliable models (column ``unreliable``) get no rank and come after the ranked ones."""
    df = df.copy()
    if df.empty:
        df["rank"] = pd.Series(dtype="Int64")
        return df
    sign = 1.0 if metric is None or lower_is_better(metric) else -1.0
    key = df[f"{metric}_mean"] * sign if metric is not None else pd.Series(math.nan, index=df.index)
    unreliable = df["unreliable"].fillna(False).astype(bool) if "unreliable" in df else \
        pd.Series(False, index=df.index)
    key = key.where(~unreliable, math.nan)
    clean = -df["clean_acc_mean"] if "clean_acc_mean" in df else pd.Series(0.0, index=df.index)
    df["_k0"], df["_k1"], df["_k2"] = unreliable.astype(int), key, clean.fillna(math.inf)
    df["_ds"] = df["dataset"].fillna("")
    # unreliable models sort among themselves by the metric they would have been ranked by
    df["_k3"] = (df[f"{metric}_mean"] * sign).where(unreliable, math.nan) if metric is not None else math.nan
    df = df.sort_values(["_ds", "_k0", "_k1", "_k3", "_k2", "model", "arch", "train_method"], na_position="last",
                        kind="mergesort")
    ranks: List = []
    counter: Dict[str, int] = {}
    for ds, k in zip(df["_ds"], df["_k1"]):
        if math.isnan(k):
            ranks.append(pd.NA)
        else:
            counter[ds] = counter.get(ds, 0) + 1
            ranks.append(counter[ds])
    df["rank"] = pd.array(ranks, dtype="Int64")
    return df.drop(columns=["_k0", "_k1", "_k2", "_k3", "_ds"]).reset_index(drop=True)


def _paired_counts(upper: Group, lower: Group, metric: str) -> Optional[Tuple[int, int, int, List]]:
    """Discordant counts (upper right & lower wrong, the reverse), examples and seeds,
    summed over the seeds both models finished; None without per-example outcomes."""
    b = c = n = 0
    used = []
    up_runs = {r.seed: r for r in upper.finished}
    for lo_run in lower.finished:
        up_run = up_runs.get(lo_run.seed)
        if up_run is None:
            continue
        cols = correct_column(up_run, metric), correct_column(lo_run, metric)
        tables = up_run.per_example(), lo_run.per_example()
        if None in cols or any(t is None or col not in t or "index" not in t for t, col in zip(tables, cols)):
            continue
        a = tables[0][["index", cols[0]]].rename(columns={cols[0]: "up"})
        z = tables[1][["index", cols[1]]].rename(columns={cols[1]: "lo"})
        both = a.merge(z, on="index").dropna()
        up, lo = both["up"].astype(str).str.lower() == "true", both["lo"].astype(str).str.lower() == "true"
        b += int((up & ~lo).sum())
        c += int((~up & lo).sum())
        n += len(both)
        used.append(lo_run.seed)
    return (b, c, n, used) if used else None


def _needed_text(needed: float, n: int, n_seeds: int) -> str:
    """What a separation of this size needs, in the reader's units: paired
    examples in all, then test images at these seeds and seeds at these images."""
    if math.isinf(needed):
        return "no difference observed, so no number of examples separates them"
    images = n // max(n_seeds, 1)
    return (f"a separation with {int(stats.POWER * 100)}% power needs about {int(needed)} paired examples: "
            f"{math.ceil(needed / max(n_seeds, 1))} test images at {n_seeds} seed(s), or "
            f"{math.ceil(needed / max(images, 1))} seed(s) at {images} images")


def _counts(group: Group, metric: str) -> Tuple[int, int]:
    k = total = 0
    for r in group.finished:
        v, n = r.value(metric), example_count(r, metric)
        if not math.isnan(v) and n > 0:
            k += int(round(v * n / 100.0))
            total += int(n)
    return k, total


def compare(upper: Group, lower: Group, metric: str, alpha: float = stats.ALPHA) -> stats.PairTest:
    """Is `lower` significantly different from `upper` on `metric`? Paired (exact
    McNemar on the shared examples) where both have per-example outcomes for the
    same seeds; else, for a rate, Fisher's exact test on the pooled counts."""
    if not is_proportion(metric):
        return stats.PairTest.untested(f"{metric} is not a proportion of examples: no test")
    paired = _paired_counts(upper, lower, metric)
    if paired is not None:
        b, c, n, seeds = paired
        p = stats.mcnemar_exact(b, c)
        needed = stats.mcnemar_needed(b, c, n, alpha)
        return stats.PairTest.of(p, "McNemar exact", f"{n} paired examples (seed {seeds_text(seeds)}): "
                                 f"{b} only the upper model got right, {c} only this one; "
                                 f"{_needed_text(needed, n, len(seeds))}", alpha, needed)
    k1, n1 = _counts(upper, metric)
    k2, n2 = _counts(lower, metric)
    if metric.endswith("_success_rate") and n1 and n2:
        p = stats.fisher_rates(k1, n1, k2, n2)
        return stats.PairTest.of(p, "Fisher exact", f"unpaired: {k1}/{n1} against {k2}/{n2}", alpha)
    return stats.PairTest.untested("no per-example outcomes for a common seed")


def mark_ties(df: pd.DataFrame, groups: Sequence[Group], metric: Optional[str],
              alpha: float = stats.ALPHA) -> pd.DataFrame:
    """Fill tied_with_above / p_vs_above / test_vs_above: each ranked model against
    the model ranked just above it in its dataset."""
    df = df.copy()
    by_key = {g.key: g for g in groups}
    tied, pvals, tests = [pd.NA] * len(df), [math.nan] * len(df), [""] * len(df)
    needed = [math.nan] * len(df)
    above: Dict[str, Group] = {}
    for i in range(len(df)):
        if metric is None or pd.isna(df["rank"].iloc[i]):
            continue
        ds = "" if pd.isna(df["dataset"].iloc[i]) else str(df["dataset"].iloc[i])
        g = by_key[df["_gkey"].iloc[i]]
        if ds in above:
            t = compare(above[ds], g, metric, alpha)
            tied[i] = pd.NA if t.tied is None else t.tied
            pvals[i] = t.p
            needed[i] = t.needed
            tests[i] = f"{t.test}: {t.detail}" if t.test else t.detail
        above[ds] = g
    df["tied_with_above"] = pd.array(tied, dtype="boolean")
    df["p_vs_above"] = pvals
    df["test_vs_above"] = tests
    df["needed_vs_above"] = needed
    return df
