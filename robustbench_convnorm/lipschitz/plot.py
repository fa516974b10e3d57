"""The per-layer spectral norm figure (ConvNorm paper, Figure 2 right)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .. import atomic

__all__ = ["plot_layer_norms"]


def plot_layer_norms(report: Union[Dict[str, Any], Dict[str, Dict[str, Any]]], path, *, title: Optional[str] = None,
                     key: str = "spectral_norm") -> Path:
    """A PNG (or the format of ``path``'s suffix) of a per-layer value against
    the layer index, written atomically.

    Args:
        report: one ``model_report`` dict, or ``{label: report}`` to overlay several models.
        path: where to write it (folders are created).
        title: the figure's title.
        key: the row key plotted (layers without it are skipped).

    Returns:
        ``path``.

    Example::

        >>> plot_layer_norms({"vanilla": rep_a, "convnorm": rep_b}, "out/layer_norms.png")
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    reports = {"": report} if "layers" in report else dict(report)
    fig = Figure(figsize=(8, 4.2))
    FigureCanvasAgg(fig)  # Agg canvas directly: no display, no global backend
    ax = fig.add_subplot(1, 1, 1)
    names: List[str] = []
    for label, rep in reports.items():
        vals = [r.get(key) for r in rep["layers"]]
        xs = [i + 1 for i, v in enumerate(vals) if v is not None]
        ys = [v for v in vals if v is not None]
        ax.plot(xs, ys, marker="o", label=label or key)
        if len(rep["layers"]) > len(names):
            names = [r["name"] for r in rep["layers"]]
    ax.set_xlabel("layer")
    ax.set_ylabel("spectral norm" if key == "spectral_norm" else key)
    ax.set_xticks(range(1, len(names) + 1))
    ax.set_xticklabels(names, rotation=70, fontsize=6)
    ax.grid(alpha=0.3)
    ax.set_title(title or "layer-wise spectral norm (power iteration on each conv layer)")
    if len(reports) > 1 or next(iter(reports), ""):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=120)
