"""Accuracy against the L2 radius, one panel per data set: each model's
certified curve (the share of test examples whose certified radius exceeds
r, from the certified evaluator's per-example radii) under its empirical
curve (clean accuracy at 0, then the lowest accuracy of its L2 white-box
attacks at each radius). A certified curve above its empirical one would be
a broken bound or a broken attack (``certified:broken``)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .board import Leaderboard
from .figures import figure, legend_outside, save, styles
from .records import num
from .settings import data_phrase

STEM = "acc_vs_l2_radius"
_GRID = 200


def _certified_radii(run) -> Optional[np.ndarray]:
    """The per-example radii of the run's first certified evaluation (NaN-free), or None."""
    table = run.per_example()
    for name, ev in run.evaluations.items():
        if ev.get("kind") == "certified" and table is not None and f"{name}_radius" in table.columns:
            return table[f"{name}_radius"].dropna().to_numpy(dtype=np.float64)
    return None


def _empirical(run) -> Dict[float, float]:
    """{L2 radius: lowest accuracy of the run's L2 white-box attacks there}, with the clean accuracy at 0."""
    points: Dict[float, float] = {}
    clean = run.metrics.get("clean_acc")
    if clean is not None and not math.isnan(num(clean)):
        points[0.0] = float(clean)
    for name, ev in run.evaluations.items():
        if ev.get("kind") != "whitebox" or str(ev.get("norm")) != "L2":
            continue
        eps, acc = num(ev.get("eps")), num(run.metrics.get(f"{name}_acc", ev.get("acc")))
        if not (math.isnan(eps) or math.isnan(acc)):
            key = round(eps, 10)
            points[key] = min(points.get(key, math.inf), acc)
    return points


def plot_acc_vs_l2_radius(lb: Leaderboard, out: Path) -> Optional[Dict[str, Path]]:
    """The figure, or None when no finished run has certified radii."""
    panels: Dict[str, List[Tuple]] = {}
    for g in lb.ranked_groups():
        radii = [x for x in (_certified_radii(r) for r in g.finished) if x is not None and len(x)]
        if not radii:
            continue
        empirical: Dict[float, List[float]] = {}
        for r in g.finished:
            for eps, acc in _empirical(r).items():
                empirical.setdefault(eps, []).append(acc)
        panels.setdefault(str(g.key[0]), []).append((g, radii, empirical))
    if not panels:
        return None
    caption = ("Solid: certified accuracy (certified L2 radius above r, from the network's sound Lipschitz bound); "
               "dashed with markers: clean accuracy at 0 and the lowest accuracy of the L2 attacks at each radius; "
               f"mean over seeds; {data_phrase(lb.settings)}.")
    fig, axes = figure("Accuracy vs L2 radius: certified under empirical", caption,
                       size=(7.5, 4.2 * len(panels)), rows=len(panels))
    style = styles(lb.groups)
    for ax, (dataset, rows) in zip(axes, panels.items()):
        top = max([float(np.max(x)) for _, radii, _ in rows for x in radii]
                  + [e for _, _, emp in rows for e in emp] + [1e-3])
        grid = np.linspace(0.0, top, _GRID)
        for g, radii, empirical in rows:
            s = style[g.key]
            curve = np.mean([[100.0 * np.mean(x > t) for t in grid] for x in radii], axis=0)
            ax.plot(grid, curve, color=s["color"], linestyle="-", label=f"{g.label} certified")
            if len(empirical) >= 1:
                xs = sorted(empirical)
                ax.plot(xs, [float(np.mean(empirical[x])) for x in xs], color=s["color"], linestyle="--",
                        marker=s["marker"], label=f"{g.label} empirical")
        ax.set_title(dataset, fontsize=9)
        ax.set_xlabel("L2 radius")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        legend_outside(ax)
    return save(fig, out, STEM)
