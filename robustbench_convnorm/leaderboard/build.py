"""build_leaderboard: records in, tables, pages, plots and exports out.

Every file goes through atomic.py, so a reader never sees half a table. A
folder that cannot hold the output stops the build with one OutputError that
names the folder and the fix.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Optional

from .. import atomic
from . import pairwise, stats
from .board import assemble
from .export import export as run_export
from .plots import write_plots
from .renderers import get_renderer, renderer_names


class OutputError(OSError):
    """The output folder cannot be created or written; the message names the fix."""


def _prepare(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"output folder {out} is a file, not a folder; give --out a folder "
                          f"(it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the output folder {out}: {err.strerror or err}; "
                          f"give --out a folder you can write") from None
    if not os.access(out, os.W_OK):
        raise OutputError(f"output folder {out} is not writable; give --out a folder you can write")


def _remove_orphans(out: Path) -> None:
    """A build killed mid-write leaves its temporary file beside the target:
    the next build removes those of dead writers (atomic.remove_orphan_temps)."""
    from .export import EXPORTERS

    atomic.remove_orphan_temps(out)
    for name in EXPORTERS.names():
        atomic.remove_orphan_temps(out / name, recursive=True)


def build_leaderboard(results_dir, out_dir=None, rank_by: Optional[str] = None,
                      formats: Optional[Iterable[str]] = None, export: Iterable[str] = (),
                      alpha: float = stats.ALPHA, plots: bool = True) -> Dict[str, Path]:
    """Build the leaderboard of RESULTS_DIR's records into out_dir (default: results_dir).

    formats: renderer names (default: every registered one: html, md, tex); export:
    exporter names (e.g. "robustbench"); plots=False leaves the plots out (and off the
    page). Returns {"runs_csv", "csv", "pairwise_csv" (every pair of ranked models
    tested), one key per format, "plot_*" (PNG) and
    "plot_*_pdf" for each plot, "export_<name>": folder}.
    Raises FileNotFoundError if results_dir does not exist, ValueError for an unknown
    rank_by, format or export, OutputError if out_dir cannot be written.
    Unreadable records are skipped with a LeaderboardWarning.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} does not exist "
                                f"(expected RESULTS_DIR/runs/*/record.json)")
    renderers = [get_renderer(name) for name in (renderer_names() if formats is None else formats)]
    export = list(export)
    if export:
        from .export import EXPORTERS

        for name in export:
            EXPORTERS.get(name)  # unknown names stop here, before any work
    out = Path(out_dir) if out_dir is not None else results_dir
    lb = assemble(results_dir, rank_by, alpha)
    _prepare(out)
    _remove_orphans(out)
    written: Dict[str, Path] = {"runs_csv": out / "leaderboard_runs.csv", "csv": out / "leaderboard.csv",
                                "pairwise_csv": out / pairwise.FILENAME}
    try:
        atomic.write_csv(written["runs_csv"], lb.runs_df)
        atomic.write_csv(written["csv"], lb.df.drop(columns=["_gkey"]))
        atomic.write_csv(written["pairwise_csv"], pairwise.pairwise_frame(lb, alpha))
        lb.plots = write_plots(lb, out) if plots else {}
        for r in renderers:
            written[r.name] = atomic.write_text(out / r.filename, r.render(lb))
        written.update(lb.plots)
        for name in export:
            run_export(lb, name, out)
            written[f"export_{name}"] = out / name
    except OSError as err:
        where = err.filename or out
        raise OutputError(f"cannot write the leaderboard into {where}: {err.strerror or err}; "
                          f"give --out a folder you can write") from None
    return written
