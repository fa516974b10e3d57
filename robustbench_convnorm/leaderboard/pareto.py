"""Robustness for the compute it costs: per data set, the ranking accuracy
against training time and against peak memory, the Pareto front marked (the
models no other model beats on both axes: at least as robust for at most the
cost, better on one)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .board import Leaderboard
from .cells import is_true
from .figures import figure, legend_outside, save, styles

#: the cost axes of the Pareto plot: metric -> axis label
COST_AXES = {"train_seconds": "training time (s)", "peak_memory_mb": "peak memory (MiB)"}
STEM = "pareto"


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point dominates, for (cost, accuracy):
    lower cost and higher accuracy are better; a point is dominated by one at
    most as costly and at least as accurate and strictly better in one. Points
    with a NaN are never on the front. Sorted by cost."""
    ok = [i for i, (c, a) in enumerate(points) if not (math.isnan(c) or math.isnan(a))]
    front = []
    for i in ok:
        ci, ai = points[i]
        dominated = any(points[j][0] <= ci and points[j][1] >= ai and (points[j][0] < ci or points[j][1] > ai)
                        for j in ok if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def panel_points(rows, metric: str, cost: str) -> Tuple[List[Tuple[float, float]], List[bool], List[int]]:
    """One panel's (cost, accuracy) per model row, which rows are unreliable,
    and the front: an unreliable evaluation overstates robustness, so it is
    drawn (hollow) but never on the front."""
    pts = [(float(row[f"{cost}_mean"]), float(row[f"{metric}_mean"])) for _, row in rows.iterrows()]
    unreliable = [is_true(row.get("unreliable")) for _, row in rows.iterrows()]
    front = pareto_front([(x, math.nan if bad else y) for (x, y), bad in zip(pts, unreliable)])
    return pts, unreliable, front


def plot_pareto(lb: Leaderboard, out: Path) -> Optional[Dict[str, Path]]:
    """One row of panels per data set, one panel per cost axis the records hold;
    None when no model has both the ranking accuracy and a cost."""
    metric = lb.rank_metric
    df = lb.df
    if not metric or metric.endswith(("_avg_queries", "_success_rate")) or f"{metric}_mean" not in df:
        return None
    axes_used = [c for c in COST_AXES if f"{c}_mean" in df and df[f"{c}_mean"].notna().any()]
    datasets = [(ds, rows) for ds, rows in lb.datasets()
                if rows[f"{metric}_mean"].notna().any() and any(rows[f"{c}_mean"].notna().any() for c in axes_used)]
    if not axes_used or not datasets:
        return None
    title = f"{lb.info.title(metric)} accuracy against training cost (Pareto front: the line)"
    caption = ("Each point a model (mean over its seeds); the connected points are the Pareto front: no other "
               "model is at least as accurate for at most the cost. Training time is wall-clock on the "
               "recording machine; peak memory is CUDA's max allocated or the CPU resident-set high-water mark. "
               "A hollow marker: an unreliable evaluation (a severe sanity check failed), never on the front.")
    fig, axes = figure(title, caption, size=(5.2 * len(axes_used), 3.8 * len(datasets)), rows=len(datasets),
                       cols=len(axes_used))
    style = styles(lb.groups)
    for r, (ds, rows) in enumerate(datasets):
        for c, cost in enumerate(axes_used):
            ax = axes[r * len(axes_used) + c]
            pts, unreliable, front = panel_points(rows, metric, cost)
            for (_, row), (x, y), bad in zip(rows.iterrows(), pts, unreliable):
                if math.isnan(x) or math.isnan(y):
                    continue
                g = lb.group(row["_gkey"])
                s = style[g.key]
                label = (g.label + (" (unreliable)" if bad else "")) if c == len(axes_used) - 1 else None
                ax.plot([x], [y], s["marker"], color=s["color"], label=label,
                        markerfacecolor="white" if bad else s["color"])
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="black", alpha=0.5,
                    linewidth=1.2, zorder=0)
            ax.set_xlabel(COST_AXES[cost])
            ax.set_ylabel(f"{lb.info.title(metric)} accuracy (%)")
            ax.set_title(str(ds), fontsize=9)
            if c == len(axes_used) - 1:
                legend_outside(ax)
    return save(fig, out, STEM)
