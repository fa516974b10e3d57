"""leaderboard.html: the page a user opens first. Static and self-contained
(inline CSS and JS, plots embedded as data URIs, nothing fetched): the
evaluation settings, the ranked tables (sortable by any column, mean ± std or
the 95 % interval), the paper's layout, the plots, what is missing, failed or
flagged, and a section per model with its runs and figures. Rendered by an
autoescaped Jinja template, so every cell is escaped."""
from __future__ import annotations

import base64
import datetime as _dt
import functools
import re
from importlib import resources
from typing import Any, Dict, List, Optional

from markupsafe import Markup

from ..reliability import unreliable_flags
from . import cells
from .board import Leaderboard
from .groups import Group, value_text
from .metrics import example_count, is_proportion, lower_is_better
from .model_plots import model_png
from .plots import PLOTS
from .render_markdown import how_ranked, tie_test
from .renderers import register_renderer
from .sanity import SANITY_CAPTION, split_sanity
from .settings import data_phrase, describe
from .stats import wilson_interval
from .table import metric_columns

_EVAL_COLUMNS = ("type", "kind", "eps", "norm", "steps", "step", "random_start", "restarts", "n", "version",
                 "basis", "n_images", "max_iters", "library")
_PLOT_TITLES = {"plot_robust_vs_clean": "Robust vs clean accuracy", "plot_acc_vs_eps": "Accuracy vs eps",
                "plot_acc_vs_steps": "Accuracy vs attack steps", "plot_simba_curve": "SimBA success vs queries",
                "plot_layer_norms": "Layer spectral norms", "plot_pareto": "Robustness against training cost",
                "plot_acc_vs_l2_radius": "Accuracy vs L2 radius (certified under empirical)"}


def _anchor(s: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(s)).strip("-") or "x"


def _uri(png: Optional[bytes]) -> Optional[str]:
    return None if not png else "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def settings_rows(lb: Leaderboard) -> List[tuple]:
    s = lb.settings
    rows = [("Data", ", ".join(s.datasets) or "–")]
    if s.data_notes:
        rows.append(("Data note", "; ".join(s.data_notes)))
    rows.append(("Test examples", " or ".join(s.n_test) if s.n_test else "not recorded"))
    if s.train:
        rows.append(("Training", "; ".join(s.train)))
    if lb.rank_metric:
        rows.append(("Ranked by", f"{describe(lb.rank_metric, s, lb.info)}, "
                                  f"{'lower' if lower_is_better(lb.rank_metric) else 'higher'} is better"))
    rows.append(("AutoAttack", ", ".join(f"version {v}" for v in s.autoattack_versions) or "not run"))
    rows.append(("Intervals", "95%: Wilson's score interval from the number of test examples for one seed; "
                              "the t interval of the mean over seeds for several"))
    rows.append(("Ties", f"against the model ranked just above: {tie_test(lb)}, "
                         f"α = {lb.alpha:g}; \"tied\" where p ≥ {lb.alpha:g}"))
    return rows


def evaluations_table(lb: Leaderboard) -> Dict[str, Any]:
    used = [c for c in _EVAL_COLUMNS if any(c in e.values for e in lb.settings.evaluations)]
    rows = [[e.name] + [e.values.get(c, "") for c in used] for e in lb.settings.evaluations]
    return {"header": ["evaluation"] + used, "rows": rows}


def _metric_cell(m: str, r) -> Dict[str, Any]:
    mean, std = r[f"{m}_mean"], r[f"{m}_std"]
    text = cells.fmt_cell(m, mean, std)
    ci = cells.fmt_interval(m, r[f"{m}_ci_lo"], r[f"{m}_ci_hi"])
    return {"text": text, "ci": f"{cells.fmt_value(m, mean)} {ci}" if ci else text,
            "sort": None if cells.isnan(mean) else f"{mean:.6g}", "cls": ""}


def ranked_section(lb: Leaderboard, ds: str, sub) -> Dict[str, Any]:
    headline = lb.info.headline()
    if lb.rank_metric and lb.rank_metric not in headline:
        headline.append(lb.rank_metric)
    metrics, sanity = split_sanity(lb, metric_columns(sub, [m for m in lb.info.names if m in headline]))
    varying = [k for k in ("arch", "train_method", "train_eps") if sub[k].nunique(dropna=False) > 1]
    # rank and model stay in view while the metrics scroll sideways (leaderboard.css)
    columns = [{"title": "rank", "key": "rank", "cls": "pin-rank", "first": "ascending"},
               {"title": "model", "key": "model", "cls": "text pin-model", "first": "ascending"},
               {"title": "vs above", "key": "p_vs_above", "cls": "", "first": "ascending"}]
    columns += [{"title": k.replace("_", " "), "key": k, "cls": "text", "first": "ascending"} for k in varying]
    columns += [{"title": "seeds", "key": "seeds", "cls": "", "first": "descending"},
                {"title": "status", "key": "status", "cls": "text", "first": "ascending"},
                {"title": "flags", "key": "flags", "cls": "text", "first": "descending"}]
    columns += [{"title": lb.info.title(m), "key": m, "cls": "",
                 "first": "ascending" if lower_is_better(m) else "descending"} for m in metrics]
    rows = []
    for _, r in sub.iterrows():
        tied = cells.is_true(r["tied_with_above"])
        unreliable = cells.is_true(r.get("unreliable"))
        out = [{"text": cells.rank_text(r["rank"], r["tied_with_above"], r.get("unreliable")),
                "cls": "pin-rank" + (" tied" if tied else (" status-bad" if unreliable else "")),
                "sort": None if cells.isnan(r["rank"]) else str(int(r["rank"])), "ci": None},
               {"text": r["model"], "href": f"#model-{_anchor(r['model_id'])}", "cls": "text pin-model",
                "sort": r["model"], "ci": None}]
        out.append({"text": cells.fmt_p(r["p_vs_above"]), "title": r["test_vs_above"] or None, "cls": "",
                    "sort": None if cells.isnan(r["p_vs_above"]) else f"{r['p_vs_above']:.6g}", "ci": None})
        out += [{"text": cells.fmt_eps(r[k]) if k == "train_eps" else cells.text(r[k]), "cls": "text",
                 "sort": None, "ci": None} for k in varying]
        out.append({"text": f"{r['n_seeds']}/{r['n_expected']}", "sort": str(r["n_seeds"]), "cls": "", "ci": None})
        out.append({"text": r["status"], "cls": "text wrap " + ("status-ok" if r["status"] == "ok" else "status-bad"),
                    "sort": None, "ci": None})
        flags = [f for f in (r["flags"] or "").split(";") if f]
        out.append({"text": "", "flags": flags, "cls": "text wrap", "sort": str(len(flags)), "ci": None})
        out += [_metric_cell(m, r) for m in metrics]
        rows.append({"model_id": r["model_id"], "cells": out})
    paper = []
    attack_rows = [m for m in lb.info.attack_rows() if m in metrics or m in sanity]
    for _, csub in sub.groupby([sub[k].astype(str) for k in ("arch", "train_method", "train_eps")], sort=False):
        body = [[lb.info.title(m)] + [cells.fmt_cell(m, a, b) for a, b in zip(csub[f"{m}_mean"], csub[f"{m}_std"])]
                for m in attack_rows if csub[f"{m}_mean"].notna().any()]
        if body:
            paper.append({"caption": f"The paper's layout, {cells.context_text(csub.iloc[0])}: attacks × models, "
                                     f"mean ± std over seeds.", "header": ["attack"] + cells.model_headers(csub),
                          "rows": body})
    checks = None
    if sanity:
        checks = {"header": ["model"] + [lb.info.title(m) for m in sanity],
                  "rows": [{"model": r["model"], "href": f"#model-{_anchor(r['model_id'])}",
                            "cells": [_metric_cell(m, r) for m in sanity]} for _, r in sub.iterrows()],
                  "caption": SANITY_CAPTION}
    return {"name": ds, "anchor": _anchor(ds), "columns": columns, "rows": rows, "paper": paper, "sanity": checks,
            "context": "" if varying else cells.context_text(sub.iloc[0])}


def _run_rows(lb: Leaderboard, g: Group) -> Dict[str, Any]:
    metrics = [m for m in lb.info.headline() if is_proportion(m) and any(m in r.metrics for r in g.runs)]
    header = ["run id", "seed", "status", "created", "epochs"] + [lb.info.title(m) for m in metrics] + ["counts"]
    counted = {id(r) for r in g.reps.values()}
    rows = []
    for r in sorted(g.runs, key=lambda r: (str(r.seed), r.created)):
        row = [r.run_id, cells.text(r.seed), r.status + (f": {r.error_reason}" if r.error_reason else ""),
               r.created or "–", cells.count_text(r.timings.get("epochs_done"))]
        for m in metrics:
            v = r.value(m)
            cell = cells.fmt_cell(m, v, float("nan"))
            if is_proportion(m) and not cells.isnan(v):
                ci = cells.fmt_interval(m, *wilson_interval(v, example_count(r, m), lb.alpha))
                cell = f"{cell} {ci}".strip()
            row.append(cell)
        row.append("✓" if id(r) in counted else "")
        rows.append(row)
    return {"header": header, "rows": rows}


def _normalizer_text(g: Group) -> str:
    label, name = g.key[2], g.runs[0].raw.get("normalizer_name")
    text = f"{name} (listed as {label})" if name and name != label else cells.text(label)
    return text + (" + BatchNorm after each conv" if g.key[3] else "")


def model_sections(lb: Leaderboard) -> List[Dict[str, Any]]:
    out = []
    for g in lb.ranked_groups():
        ctx = g.context
        facts = [("Model id", g.model_id), ("Data", cells.text(ctx["dataset"])), ("Architecture", cells.text(ctx["arch"])),
                 ("Normalizer", _normalizer_text(g)),
                 ("Training", f"{cells.text(ctx['train_method'])}, train eps {cells.fmt_eps(ctx['train_eps'])}")]
        if g.variant:
            facts.append(("Variant", g.variant))
        options = g.runs[0].normalizer_options
        if options:
            facts.append(("Normalizer options", ", ".join(f"{k}={value_text(v)}" for k, v in sorted(options.items()))))
        facts.append(("Seeds", f"{len(g.finished)} finished of {len(set(g.expected) | set(g.reps))} expected"))
        if g.notes:
            facts.append(("Notes", "; ".join(g.notes)))
        out.append({"id": _anchor(g.model_id), "label": g.label, "facts": facts, "runs": _run_rows(lb, g),
                    "figure": _uri(model_png(g))})
    return out


def table9(lb: Leaderboard) -> Optional[Dict[str, Any]]:
    """Table 9 from the Lipschitz package, when it and the records' Lipschitz data are there."""
    raw = [r.raw for r in lb.runs if r.lipschitz]
    if not raw:
        return None
    try:
        from ..lipschitz import table9 as compute
        from ..lipschitz.convnorm_table9 import PLACEHOLDER_NOTE
        rows = compute(raw)
    except Exception:  # another package's table; the page goes on without it
        return None
    if not rows:
        return None

    def mean_cell(x) -> str:  # a placeholder (infinite condition number) is never shown as a number
        if x.get("mean_improvement") is None:
            return "n/a ¹"
        return cells.fmt_cell("cond", x["mean_improvement"], x.get("std") if (x.get("runs") or 0) > 1 else None)

    body = [[cells.text(x.get("dataset")), cells.text(x.get("arch")), cells.text(x.get("train_method")),
             cells.fmt_eps(x.get("train_eps")), cells.text(x.get("normalizer")), mean_cell(x),
             cells.text(x.get("runs")), f"{x['placeholder_runs']} ¹" if x.get("placeholder_runs") else "0"]
            for x in rows]
    note = f"¹ {PLACEHOLDER_NOTE}" if any(x.get("placeholder_runs") for x in rows) else None
    return {"header": ["dataset", "arch", "method", "train eps", "normalizer", "mean improvement", "runs",
                       "n/a runs"], "rows": body, "note": note}


def problems(lb: Leaderboard) -> List[Dict[str, Any]]:
    out = []
    for g in lb.ranked_groups():
        href = f"#model-{_anchor(g.model_id)}"
        out += [{"model": g.label, "href": href, "text": n} for n in g.notes]
        flags = sorted({f for r in g.reps.values() for f in r.flags})
        severe = unreliable_flags(f for r in g.finished for f in r.flags)
        if severe:
            out.append({"model": g.label, "href": href,
                        "text": "unreliable, not ranked (a severe sanity check failed): " + ", ".join(severe)})
        if flags:
            out.append({"model": g.label, "href": href, "text": "sanity-check flags: " + ", ".join(flags)})
    out += [{"model": str(path), "href": None, "text": f"skipped unreadable record: {reason}"}
            for path, reason in lb.skipped]
    return out


@functools.lru_cache(maxsize=1)
def _environment():
    from jinja2 import Environment, PackageLoader

    return Environment(loader=PackageLoader(__package__, "templates"), autoescape=True)


@register_renderer("html", "leaderboard.html")
def render(lb: Leaderboard) -> str:
    env = _environment()
    caption = (how_ranked(lb).replace("**", "") if lb.rank_metric else "Not ranked: no metric to rank by.")
    caption += (f" Cells: mean ± sample std over finished seeds, or the mean with its 95% interval. "
                f"\"(tied)\": not significantly different from the model above ({tie_test(lb)}, α = {lb.alpha:g}); "
                f"\"vs above\" gives the p-value (hover for the counts). Evaluated on {data_phrase(lb.settings)}.")
    plots = [{"title": _PLOT_TITLES.get(k, k), "uri": _uri(p.read_bytes()),
              "pdf": f"{PLOTS[k]}.pdf" if f"{k}_pdf" in lb.plots else None}
             for k, p in lb.plots.items() if k in PLOTS]
    return env.get_template("leaderboard.html.j2").render(
        title="Leaderboard", built=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        n_records=len(lb.runs), results_dir=str(lb.results_dir), settings=settings_rows(lb),
        evaluations=evaluations_table(lb), caption=caption,
        datasets=[ranked_section(lb, ds, sub) for ds, sub in lb.datasets()],
        empty_text="No run records found." if not lb.skipped else "No readable run records found.",
        plots=plots, table9=table9(lb), problems=problems(lb), models=model_sections(lb),
        css=Markup(_asset("leaderboard.css")), js=Markup(_asset("leaderboard.js")))
