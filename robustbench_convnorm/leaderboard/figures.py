"""What every leaderboard figure shares: one colour per normalizer (the same in
every plot and every build), a figure with a caption, and the writers."""
from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Dict, List, Tuple

from .. import atomic
from .groups import Group

# Fixed colours for the normalizers this project ships (matplotlib's tab10 hues),
# so a normalizer keeps its colour whatever else a grid holds.
# The 1-Lipschitz layers take fixed colours too: hashed into the spares, two of
# them (LOT, BCOP) once shared one in the same plot.
_PALETTE = {
    "vanilla": "#7f7f7f", "bn": "#1f77b4", "sn": "#ff7f0e", "oni": "#2ca02c", "ocnn": "#d62728",
    "convnorm": "#9467bd", "cayley": "#8c564b", "tn": "#e377c2",
    "aol": "#bcbd22", "soc": "#17becf", "lot": "#393b79", "bcop": "#637939", "sll": "#8c6d31",
    "cpl": "#843c39",
}
_SPARE = ["#7b4173", "#3182bd", "#e6550d", "#31a354", "#6b6ecf", "#b5cf6b", "#e7ba52", "#ad494a"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
PNG_DPI = 120


def colour(normalizer) -> str:
    """The normalizer's colour: fixed for known names, a stable pick from spares for others."""
    name = str(normalizer or "?").lower()
    if name in _PALETTE:
        return _PALETTE[name]
    return _SPARE[zlib.crc32(name.encode()) % len(_SPARE)]


def styles(groups: List[Group]) -> Dict[Tuple, dict]:
    """key -> matplotlib style: colour by normalizer, dashed with BatchNorm, a marker per variant."""
    seen: Dict[Tuple, int] = {}
    out = {}
    for g in groups:
        i = seen.setdefault(g.key[2:4], 0)
        seen[g.key[2:4]] = i + 1
        out[g.key] = {"color": colour(g.key[2]), "linestyle": "--" if g.key[3] and g.key[2] != "bn" else "-",
                      "marker": _MARKERS[i % len(_MARKERS)]}
    return out


def figure(title: str, caption: str = "", size=(7.5, 4.8), rows: int = 1, cols: int = 1, tight: bool = True):
    """A Figure (no pyplot: no global state) with its axes, title and a caption under the plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=11)
    if caption:  # under the axes: below the figure when the saved box is cropped tight, else at the bottom
        fig.text(0.01, -0.01 if tight else 0.02, caption, ha="left", va="top" if tight else "bottom",
                 fontsize=7.5, wrap=True, gid="caption")
    return fig, axes


def legend_outside(ax) -> None:
    """The legend right of the axes, never over the data."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)


def caption_text(fig):
    """The figure's caption (the Text `figure` adds), or None."""
    return next((t for t in fig.texts if t.get_gid() == "caption"), None)


def place_caption(fig, renderer=None, gap_px: float = 6.0) -> None:
    """Put the caption just under everything the axes drew (rotated tick labels, axis labels), so it
    never runs over them."""
    cap = caption_text(fig)
    if cap is None or not fig.axes:
        return
    renderer = renderer or fig.canvas.get_renderer()
    bottom = min(ax.get_tightbbox(renderer).y0 for ax in fig.axes)      # display pixels
    cap.set_y(min(cap.get_position()[1], (bottom - gap_px) / fig.bbox.height))
    cap.set_va("top")


def save(fig, out_dir: Path, stem: str) -> Dict[str, Path]:
    """PNG (for the page, with title and caption) and PDF (for a paper, whose own caption says what the
    figure shows: no title, no caption drawn in), both atomically, each cropped to what it draws."""
    renderer = fig.canvas.get_renderer()
    place_caption(fig, renderer)
    png = atomic.save_figure(fig, out_dir / f"{stem}.png", dpi=PNG_DPI,
                             bbox_inches=fig.get_tightbbox(renderer).padded(0.1))
    words = [t for t in (caption_text(fig), fig._suptitle) if t is not None and t.get_visible()]
    for t in words:
        t.set_visible(False)
    try:
        pdf = atomic.save_figure(fig, out_dir / f"{stem}.pdf", bbox_inches=fig.get_tightbbox(renderer).padded(0.1))
    finally:
        for t in words:
            t.set_visible(True)
    return {"png": png, "pdf": pdf}


def png_bytes(fig, dpi: int = 80, tight: bool = True) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    return buf.getvalue()
