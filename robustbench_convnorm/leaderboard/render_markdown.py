"""leaderboard.md: the ranked tables, the paper's layout and the notes, as Markdown."""
from __future__ import annotations

import re
from typing import List

from . import cells
from .board import Leaderboard
from .metrics import lower_is_better
from .renderers import register_renderer
from .sanity import SANITY_CAPTION, split_sanity
from .settings import data_phrase, describe
from .table import metric_columns


#: the masking check's flag (attacks/checks.py): a PGD significantly above AutoAttack or its APGD part
MASKING_FLAG = re.compile(r">(autoattack|apgd_ce_t)")


def md_table(header: List[str], rows: List[List[str]]) -> List[str]:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return out


def value_cell(m: str, r) -> str:
    """'mean ± std [lo, hi]': the interval where there is one."""
    cell = cells.fmt_cell(m, r[f"{m}_mean"], r[f"{m}_std"])
    ci = cells.fmt_interval(m, r[f"{m}_ci_lo"], r[f"{m}_ci_hi"])
    return f"{cell} {ci}" if ci else cell


def how_ranked(lb: Leaderboard) -> str:
    m = lb.rank_metric
    how = "lower is better" if lower_is_better(m) else "higher is better"
    why = " (the strongest white-box attack)" if lb.ranked_by_default and m in lb.info.whitebox else ""
    if lb.ranked_by_default and m == "worst_case_whitebox_acc":
        why = " (per example: correct on clean and under every white-box attack of the threat model)"
    return f"Ranked within each dataset by **{lb.info.title(m)}**{why}, {how}."


_TIE_TESTS = {"McNemar exact": "exact McNemar test on the same test examples",
              "Fisher exact": "Fisher's exact test on the success counts, unpaired"}


def tie_test(lb: Leaderboard) -> str:
    """The test(s) behind the "(tied)" marks, as the ranking ran them (ranking.compare
    falls back from McNemar to Fisher for rates without paired outcomes)."""
    used = {str(t).split(":")[0] for t in lb.df.get("test_vs_above", ())}
    named = [phrase for test, phrase in _TIE_TESTS.items() if test in used]
    return "; ".join(named) or _TIE_TESTS["McNemar exact"]


def intro(lb: Leaderboard) -> List[str]:
    lines = [f"Built from the run records under `{lb.results_dir}`; cells are mean ± sample std over "
             "finished seeds (the mean alone for one seed), then the 95% interval in brackets: "
             "Wilson's interval from the number of test examples for one seed, the t interval "
             "over seeds for several. Accuracies and rates in %."]
    if lb.rank_metric:
        lines.append(how_ranked(lb) + f" \"(tied)\": not significantly different from the model ranked "
                     f"just above ({tie_test(lb)}, α = {lb.alpha:g}).")
        lines.append(f"Evaluated: {describe(lb.rank_metric, lb.settings, lb.info)} on {data_phrase(lb.settings)}.")
    return lines


@register_renderer("md", "leaderboard.md")
def render(lb: Leaderboard) -> str:
    lines = ["# Leaderboard", ""] + intro(lb) + [""]
    df = lb.df
    if df.empty:
        lines.append("No run records found." if not lb.skipped else "No readable run records found.")
    headline = lb.info.headline()
    if lb.rank_metric and lb.rank_metric not in headline:
        headline.append(lb.rank_metric)
    metric_cols = metric_columns(df, [m for m in lb.info.names if m in headline])
    for ds, sub in lb.datasets():
        lines += [f"## {ds}", ""]
        varying = [k for k in ("arch", "train_method", "train_eps") if sub[k].nunique(dropna=False) > 1]
        if not varying:
            lines += [cells.context_text(sub.iloc[0]), ""]
        cols, sanity = split_sanity(lb, metric_columns(sub, metric_cols))
        header = ["rank", "model"] + [{"arch": "arch", "train_method": "method", "train_eps": "train eps"}[k]
                                      for k in varying]
        header += ["seeds"] + [lb.info.title(m) for m in cols] + ["status", "flags"]
        rows, apart = [], []
        for _, r in sub.iterrows():
            unreliable = cells.is_true(r.get("unreliable"))
            row = [cells.rank_text(r["rank"], r["tied_with_above"], unreliable), r["model"]]
            row += [cells.fmt_eps(r[k]) if k == "train_eps" else cells.text(r[k]) for k in varying]
            row.append(f"{r['n_seeds']}/{r['n_expected']}")
            row += [value_cell(m, r) for m in cols]
            nflags = len(r["flags"].split(";")) if r["flags"] else 0
            row += [r["status"], str(nflags) if nflags else ""]
            (apart if unreliable else rows).append(row)
        if rows:
            lines += md_table(header, rows) + [""]
        if apart:   # listed apart: their numbers are not comparable with the ranked ones
            lines += [f"**Unreliable, not ranked** ({len(apart)}): the evaluation failed a severe sanity "
                      "check (see \"Unreliable evaluations\" below); its accuracies overstate robustness.", ""]
            lines += md_table(header, apart) + [""]
        if sanity:
            lines += [f"### {ds} · sanity points", "", SANITY_CAPTION, ""]
            lines += md_table(["model"] + [lb.info.title(m) for m in sanity],
                              [[r["model"]] + [value_cell(m, r) for m in sanity] for _, r in sub.iterrows()]) + [""]

        # The paper's Table 1 layout: attacks as rows, models as columns, per comparable context.
        attack_rows = [m for m in lb.info.attack_rows() if m in cols or m in sanity]
        if attack_rows:
            for _, csub in sub.groupby([sub[k].astype(str) for k in ("arch", "train_method", "train_eps")],
                                       sort=False):
                lines += [f"### {ds} · {cells.context_text(csub.iloc[0])}: attacks × models", ""]
                header = ["attack"] + cells.model_headers(csub)
                rows = [[lb.info.title(m)] + [cells.fmt_cell(m, a, b) for a, b in
                                              zip(csub[f"{m}_mean"], csub[f"{m}_std"])]
                        for m in attack_rows if csub[f"{m}_mean"].notna().any()]
                lines += md_table(header, rows) + [""]
    lines += notes(lb)
    return "\n".join(lines)


def notes(lb: Leaderboard) -> List[str]:
    lines: List[str] = []
    noted = [g for g in lb.ranked_groups() if g.notes]
    if noted or lb.skipped:
        lines += ["## Missing, failed or partial", ""]
        for g in noted:
            where = f"{cells.text(g.key[0])} · {cells.context_text(g.context)}"
            lines.append(f"- **{g.label}** ({where}): " + "; ".join(g.notes))
        for path, reason in lb.skipped:
            lines.append(f"- skipped unreadable record `{path}`: {reason}")
        lines.append("")
    unreliable = [r for _, r in lb.df.iterrows() if cells.is_true(r.get("unreliable"))]
    if unreliable:
        lines += ["## Unreliable evaluations", "",
                  "Not ranked: each failed a severe sanity check (docs/evaluators.md, \"Which flags make an "
                  "evaluation unreliable\").", ""]
        for r in unreliable:
            where = f"{cells.text(r['dataset'])} · {cells.context_text(r)}"
            lines.append(f"- **{r['model']}** ({where}): unreliable because of "
                         f"{r['unreliable_flags'].replace(';', '; ')}")
        if any(MASKING_FLAG.search(str(r["unreliable_flags"])) for r in unreliable):
            lines += ["", "For a PGD-above-AutoAttack flag, `robustbench-convnorm masking RUN_DIR` attacks the "
                          "run's evaluated images with longer, adaptive, DLR and targeted attacks to say why "
                          "(docs/evaluators.md)."]
        lines.append("")
    flagged = [r for _, r in lb.df.iterrows() if r["flags"]]
    if flagged:
        lines += ["## Sanity-check flags", ""]
        for r in flagged:
            where = f"{cells.text(r['dataset'])} · {cells.context_text(r)}"
            lines.append(f"- **{r['model']}** ({where}): {r['flags'].replace(';', '; ')}")
        lines.append("")
    if lb.settings.data_notes:
        lines += ["## Data", ""] + [f"- {n}" for n in lb.settings.data_notes] + [""]
    return lines
