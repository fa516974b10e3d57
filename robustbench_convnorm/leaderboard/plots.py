"""The leaderboard's figures, PNG and PDF, each written only when the records
hold data for it: robust vs clean accuracy, accuracy vs eps and vs attack
steps, SimBA success vs queries, and the layer spectral norms of each grid.
Captions state the attack settings, the number of test images and the data;
error bars are 95 % intervals (Wilson for one seed, t over seeds)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import stats
from .board import Leaderboard
from .cells import fmt_eps
from .figures import figure, legend_outside, save, styles
from .groups import Group
from .metrics import eval_base, example_count
from .pareto import STEM as STEM_PARETO
from .pareto import plot_pareto
from .radius_plot import plot_acc_vs_l2_radius
from .ranking import strongest_whitebox
from .records import num
from .sanity import SANITY_EPS
from .settings import data_phrase, describe

PLOTS = {  # key -> file stem (PNG and PDF)
    "plot_robust_vs_clean": "robust_vs_clean",
    "plot_acc_vs_eps": "acc_vs_eps",
    "plot_acc_vs_steps": "acc_vs_steps",
    "plot_simba_curve": "simba_success_vs_queries",
    "plot_layer_norms": "layer_norms",
    "plot_pareto": STEM_PARETO,
    "plot_acc_vs_l2_radius": "acc_vs_l2_radius",   # radius_plot.py
}
INTERVALS = "error bars: 95% intervals (Wilson from the test examples for one seed, t over seeds for several)"


def _point(values: List[float], ns: List[float], alpha: float) -> Tuple[float, float, float]:
    """mean and its interval for one plotted point."""
    mean = float(np.mean(values))
    if len(values) >= 2:
        lo, hi = stats.seed_interval(values, alpha)
    else:
        lo, hi = stats.wilson_interval(values[0], ns[0], alpha)
    return mean, lo, hi


def _yerr(mean, lo, hi):
    if math.isnan(lo) or math.isnan(hi):
        return None
    return [[max(mean - lo, 0.0)], [max(hi - mean, 0.0)]]


def _context_suffix(g: Group, many: bool) -> str:
    c = g.context
    return f" [{c['dataset']}/{c['arch']}/{c['train_method']} {fmt_eps(c['train_eps'])}]" if many else ""


def _many_contexts(lb: Leaderboard) -> bool:
    return len({tuple(g.key[i] for i in (0, 1, 4, 5)) for g in lb.groups if g.finished}) > 1


def plot_robust_vs_clean(lb: Leaderboard, out: Path) -> Optional[Dict[str, Path]]:
    robust = strongest_whitebox(lb.info, lb.df) or ("worst_case_acc" if "worst_case_acc" in lb.info.names else None)
    df = lb.df
    if not robust or "clean_acc_mean" not in df or f"{robust}_mean" not in df:
        return None
    pts = df[df["clean_acc_mean"].notna() & df[f"{robust}_mean"].notna()]
    if not len(pts):
        return None
    title = f"{lb.info.title(robust)} vs clean accuracy"
    caption = f"{describe(robust, lb.settings, lb.info)}; {data_phrase(lb.settings)}; {INTERVALS}."
    fig, (ax,) = figure(title, caption)
    style, many = styles(lb.groups), _many_contexts(lb)
    for _, r in pts.iterrows():
        g = lb.group(r["_gkey"])
        x, y = r["clean_acc_mean"], r[f"{robust}_mean"]
        s = style[g.key]
        ax.errorbar(x, y, xerr=_yerr(x, r["clean_acc_ci_lo"], r["clean_acc_ci_hi"]),
                    yerr=_yerr(y, r[f"{robust}_ci_lo"], r[f"{robust}_ci_hi"]), fmt=s["marker"], capsize=3,
                    color=s["color"], label=g.label + _context_suffix(g, many))
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"{lb.info.title(robust)} accuracy (%)")
    legend_outside(ax)
    return save(fig, out, PLOTS["plot_robust_vs_clean"])


def _whitebox_points(lb: Leaderboard):
    """(group, name, base, eps, steps, step, norm, acc, n) per white-box evaluation of a finished run."""
    wb = set(lb.info.whitebox)
    for g in lb.groups:
        for r in g.finished:
            for name, ev in r.evaluations.items():
                kind = ev.get("kind")
                if (kind is not None and kind != "whitebox") or (kind is None and f"{name}_acc" not in wb):
                    continue
                acc = r.metrics.get(f"{name}_acc", num(ev.get("acc")))
                if math.isnan(acc):
                    continue
                steps = num(ev.get("steps"))
                yield (g, name, eval_base(name, ev), num(ev.get("eps")), None if math.isnan(steps) else int(steps),
                       num(ev.get("step")), str(ev.get("norm") or "Linf"), acc, example_count(r, f"{name}_acc"))


def _sweeps(points, vary: str):
    """{(group key, family): {x: [(acc, n), ...]}} for the families whose `vary` takes ≥ 2 values."""
    fam_x: Dict[Tuple, set] = {}
    data: Dict[Tuple, Dict[float, list]] = {}
    for g, name, base, eps, steps, step, norm, acc, n in points:
        if vary == "eps":
            if math.isnan(eps):
                continue
            fam, x = (base, steps, norm), eps
        else:
            if steps is None:
                continue
            fam, x = (base, None if math.isnan(eps) else round(eps, 10), norm), steps
        fam_x.setdefault(fam, set()).add(x)
        data.setdefault((g.key, fam), {}).setdefault(x, []).append((acc, n))
    families = {f for f, xs in fam_x.items() if len(xs) >= 2}
    return {k: v for k, v in data.items() if k[1] in families}, sorted(families, key=str)


def _family_text(fam, vary: str) -> str:
    base, other, norm = fam
    norm = norm.replace("Linf", "L∞")
    if vary == "eps":
        return f"{base.upper()}" + (f", {other} steps" if other else "") + f", {norm}"
    return f"{base.upper()}, {norm} eps {fmt_eps(other)}"


def plot_sweep(lb: Leaderboard, out: Path, vary: str) -> Optional[Dict[str, Path]]:
    lines, families = _sweeps(list(_whitebox_points(lb)), vary)
    if not lines:
        return None
    fams = "; ".join(_family_text(f, vary) for f in families)
    title = f"Accuracy vs {'eps' if vary == 'eps' else 'attack steps'} ({fams})"
    caption = f"{data_phrase(lb.settings)}; {INTERVALS}."
    apart = vary == "eps" and any(x >= SANITY_EPS for xs in lines.values() for x in xs)
    if apart:
        caption += (f" Hollow markers, not joined to the lines: sanity points at eps ≥ {SANITY_EPS:g} "
                    f"(accuracy should be about chance there); the eps between were not measured.")
    fig, (ax,) = figure(title, caption)
    style, many = styles(lb.groups), _many_contexts(lb)
    order = {g.key: i for i, g in enumerate(lb.ranked_groups())}
    scale = 255.0 if vary == "eps" else 1.0
    span = (max(x for xs in lines.values() for x in xs) - min(x for xs in lines.values() for x in xs)) * scale
    for i, ((gkey, fam), xs) in enumerate(sorted(lines.items(), key=lambda kv: (order[kv[0][0]], str(kv[0][1])))):
        g, s = lb.group(gkey), style[gkey]
        x = sorted(xs)
        pts = [_point([a for a, _ in xs[v]], [n for _, n in xs[v]], lb.alpha) for v in x]
        dodge = (i - (len(lines) - 1) / 2) * 0.008 * span  # side by side, so the error bars stay readable
        xplot = [v * scale + dodge for v in x]
        mean = [p[0] for p in pts]
        err = np.array([[m - lo if not math.isnan(lo) else 0.0 for m, lo, _ in pts],
                        [hi - m if not math.isnan(hi) else 0.0 for m, _, hi in pts]])
        extra = f" ({_family_text(fam, vary)})" if len(families) > 1 else ""
        err = np.clip(err, 0, None)
        swept = [j for j, v in enumerate(x) if not (vary == "eps" and v >= SANITY_EPS)]
        sanity = [j for j in range(len(x)) if j not in swept]
        label = g.label + extra + _context_suffix(g, many)
        if swept:  # the line joins measured sweep points only
            ax.errorbar([xplot[j] for j in swept], [mean[j] for j in swept], yerr=err[:, swept], capsize=3,
                        label=label, **s)
        if sanity:
            ax.errorbar([xplot[j] for j in sanity], [mean[j] for j in sanity], yerr=err[:, sanity], capsize=3,
                        color=s["color"], marker=s["marker"], linestyle="none", markerfacecolor="white",
                        label=None if swept else label)
    ax.set_xlabel("eps (L∞, in 1/255)" if vary == "eps" else "attack steps")
    ax.set_ylabel("accuracy (%)")
    legend_outside(ax)
    return save(fig, out, PLOTS["plot_acc_vs_eps" if vary == "eps" else "plot_acc_vs_steps"])


def simba_linestyle(model_style: str, bounded: bool) -> str:
    """A model's style ("-", or "--" with BatchNorm) for its unbounded SimBA curve; its bounded curve
    gets a style of its own (":" or "-."), so the two never look alike, nor like another model's."""
    return {"-": ":", "--": "-."}.get(model_style, ":") if bounded else model_style


def plot_simba(lb: Leaderboard, out: Path) -> Optional[Dict[str, Path]]:
    curves: Dict[Tuple, list] = {}
    for g in lb.groups:
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
    if not curves:
        return None
    names = sorted({k[1] for k in curves})
    caption = "; ".join(describe(f"{n}_success_rate", lb.settings, lb.info) for n in names)
    caption += f"; images drawn from {data_phrase(lb.settings)}, correctly classified ones per model; mean over seeds."
    bounded = {n for n in names if any(isinstance(r.evaluations.get(n), dict)
                                       and r.evaluations[n].get("linf_bound") is not None for r in lb.runs)}
    if bounded and bounded != set(names):
        caption += " Solid or dashed: unbounded; dotted or dash-dotted: bounded to eps (a sanity point)."
    fig, (ax,) = figure("SimBA success rate vs queries", caption)
    style, many = styles(lb.groups), _many_contexts(lb)
    order = {g.key: i for i, g in enumerate(lb.ranked_groups())}
    for (gkey, name), cs in sorted(curves.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        grid = np.unique(np.concatenate([q for q, _ in cs]))
        mean = np.mean([np.interp(grid, q, s) for q, s in cs], axis=0)
        g, s = lb.group(gkey), style[gkey]
        ax.plot(grid, mean, color=s["color"], linestyle=simba_linestyle(s["linestyle"], name in bounded),
                label=g.label + (f" {name}" if len(names) > 1 else "") + _context_suffix(g, many))
    ax.set_xlabel("queries")
    ax.set_ylabel("success rate (%)")
    legend_outside(ax)
    return save(fig, out, PLOTS["plot_simba_curve"])


def layer_norm_lines(groups: List[Group]):
    """(group, layer names, mean spectral norm per layer over the finished seeds) with Lipschitz data."""
    for g in groups:
        per_layer: Dict[str, List[float]] = {}
        order: List[str] = []
        for r in g.finished:
            for layer in (r.lipschitz or {}).get("layers") or []:
                v = num(layer.get("spectral_norm"))
                if isinstance(layer, dict) and "name" in layer and not math.isnan(v):
                    if layer["name"] not in per_layer:
                        order.append(layer["name"])
                    per_layer.setdefault(layer["name"], []).append(v)
        if order:
            yield g, order, [float(np.mean(per_layer[n])) for n in order]


def draw_layer_norms(ax, groups: List[Group], style) -> bool:
    names: List[str] = []
    drawn = False
    for g, layers, values in layer_norm_lines(groups):
        s = style[g.key]
        ax.plot(range(1, len(values) + 1), values, label=g.label, **s)
        names = layers if len(layers) > len(names) else names
        drawn = True
    if drawn:
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":", label="σ = 1")
        ax.set_yscale("log")
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels(names, rotation=70, fontsize=6)
        ax.set_ylabel("layer spectral norm σ")
    return drawn


def plot_layer_norms(lb: Leaderboard, out: Path) -> Optional[Dict[str, Path]]:
    contexts: Dict[Tuple, List[Group]] = {}
    for g in lb.ranked_groups():
        if any(r.lipschitz for r in g.finished):
            contexts.setdefault(tuple(g.key[i] for i in (0, 1, 4, 5)), []).append(g)
    if not contexts:
        return None
    caption = ("Spectral norm of each conv layer as an operator on its input size (power iteration), "
               "mean over seeds; one line per model.")
    fig, axes = figure("Layer spectral norms", caption, size=(8.5, 4.2 * len(contexts)), rows=len(contexts))
    style = styles(lb.groups)
    for ax, ((ds, arch, method, eps), groups) in zip(axes, contexts.items()):
        draw_layer_norms(ax, groups, style)
        ax.set_title(f"{ds} · {arch} · {method} · train eps {fmt_eps(eps)}", fontsize=9)
        legend_outside(ax)
    return save(fig, out, PLOTS["plot_layer_norms"])


def write_plots(lb: Leaderboard, out: Path) -> Dict[str, Path]:
    """Every plot the data supports: {'plot_x': png, 'plot_x_pdf': pdf}. Plots of an
    earlier build that this data no longer supports are removed."""
    made = {
        "plot_robust_vs_clean": plot_robust_vs_clean(lb, out),
        "plot_acc_vs_eps": plot_sweep(lb, out, "eps"),
        "plot_acc_vs_steps": plot_sweep(lb, out, "steps"),
        "plot_simba_curve": plot_simba(lb, out),
        "plot_layer_norms": plot_layer_norms(lb, out),
        "plot_pareto": plot_pareto(lb, out),
        "plot_acc_vs_l2_radius": plot_acc_vs_l2_radius(lb, out),
    }
    written: Dict[str, Path] = {}
    for key, paths in made.items():
        if paths:
            written[key], written[f"{key}_pdf"] = paths["png"], paths["pdf"]
        else:
            for suffix in (".png", ".pdf"):
                stale = out / f"{PLOTS[key]}{suffix}"
                if stale.exists():
                    stale.unlink()
    return written
