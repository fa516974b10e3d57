"""Publish a results folder: its runs' records, per-example outcomes and
training logs (never checkpoints) copied into a folder meant to be committed,
with the command, machine and dates that made them, and its leaderboard built
there from those copies alone.

    robustbench-convnorm publish RESULTS_DIR DEST --command "make demo"

``results/published/<name>/`` holds what the README shows; a test rebuilds
each published leaderboard from its committed records and checks it is the
committed one, so a published table can never drift from its records.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .. import atomic
from . import cells
from .board import Leaderboard, assemble
from .build import build_leaderboard
from .records import PER_EXAMPLE, PER_EXAMPLE_GZ
from .render_markdown import md_table, value_cell
from .sanity import split_sanity

PROG = "robustbench-convnorm publish"
#: the files of a run that are published (small, and all a leaderboard reads);
#: per_example.csv is stored gzipped (a quarter of the size: results/published/
#: travels with every checkout sent to a GPU machine, where 64 MiB is all)
RUN_FILES = ("record.json", PER_EXAMPLE, "train_log.csv")
ABOUT = "PUBLISHED.md"
#: the compact table the README quotes: one row per model, the columns of summary_columns
SUMMARY = "summary.md"
#: cost and bound columns of the summary, where the records have them (shown without intervals)
SUMMARY_TAIL = ("train_seconds", "peak_memory_mb", "lip_network_log10")
#: the formats built in a published folder: Markdown (what the README quotes) and the CSVs, plus plots
FORMATS = ["md"]
BUILT_FROM = "Built from the run records under"


def copy_runs(results_dir: Path, dest: Path) -> List[str]:
    """Each run's published files into DEST/runs/<run_id>/ (DEST/runs is replaced
    whole, so a run removed from the results is removed here too). Returns the ids."""
    runs = sorted(p.parent for p in (results_dir / "runs").glob("*/record.json"))
    if not runs:
        raise FileNotFoundError(f"no run records under {results_dir}/runs/: run the config first")
    staging = dest / ".runs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    for run in runs:
        (staging / run.name).mkdir(parents=True)
        for name in RUN_FILES:
            if name == PER_EXAMPLE and (run / name).exists():
                gzip_file(run / name, staging / run.name / PER_EXAMPLE_GZ)
            elif (run / name).exists():
                shutil.copy2(run / name, staging / run.name / name)
    shutil.rmtree(dest / "runs", ignore_errors=True)
    staging.rename(dest / "runs")
    return [r.name for r in runs]


def gzip_file(src: Path, dst: Path) -> None:
    """``src`` gzipped into ``dst``, byte for byte the same each time (no name or
    time in the header), so republishing unchanged runs changes no file."""
    with open(src, "rb") as f, open(dst, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as out:
        shutil.copyfileobj(f, out)


def drop_pdfs(written: Dict[str, Path]) -> Dict[str, Path]:
    """The plots as PNG only: the PDFs double the plots' size for no reader of a published folder."""
    for key in [k for k in written if k.endswith("_pdf")]:
        written.pop(key).unlink(missing_ok=True)
    return written


def provenance(dest: Path) -> Dict[str, List[str]]:
    """What made the records: machines, torch versions, commits and the dates of the records."""
    machines, torches, shas, dates = set(), set(), set(), []
    for path in sorted((dest / "runs").glob("*/record.json")):
        rec = json.loads(path.read_text())
        env = rec.get("environment") or {}
        machines.add(str(env.get("device_name") or rec.get("device") or "?"))
        torches.add(str((rec.get("versions") or {}).get("torch", "?")))
        shas.add(str(rec.get("git_sha") or "?"))
        if rec.get("created"):
            dates.append(str(rec["created"]))
    return {"machine": sorted(machines), "torch": sorted(torches), "git_sha": sorted(shas),
            "dates": [min(dates), max(dates)] if dates else []}


def about_text(command: str, note: str, ids: Sequence[str], prov: Dict[str, List[str]]) -> str:
    dates = " to ".join(prov["dates"]) if prov["dates"] else "?"
    lines = [f"# {len(ids)} published run(s)", "",
             f"- command: `{command}`",
             f"- machine: {'; '.join(prov['machine'])}",
             f"- torch: {', '.join(prov['torch'])}",
             f"- commit(s) of the code that made them: {', '.join(prov['git_sha'])}",
             f"- records created: {dates}",
             "", "Each `runs/<run_id>/` holds the run's record.json, per_example.csv (gzipped) and train_log.csv "
                 "(no checkpoints). `leaderboard.md`, `summary.md` (what the README quotes), the CSVs and "
                 "the plots were built from them by "
                 "`robustbench-convnorm publish`; tests/test_published.py rebuilds them in CI."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def summary_columns(lb: Leaderboard) -> List[str]:
    """clean, the ranking metric, AutoAttack's (or its APGD part's) accuracy, every
    certified accuracy, the first black-box success rate that is not a sanity
    point, then cost and the network bound."""
    names = lb.info.names
    cols = [m for m in ("clean_acc", lb.rank_metric) if m in names]
    cols += [m for m in lb.info.whitebox if m.startswith(("autoattack", "apgd")) and m not in cols]
    cols += [m for m in lb.info.certified if m not in cols]
    ranked, _ = split_sanity(lb, [f"{n}_success_rate" for n in lb.info.blackbox if f"{n}_success_rate" in names])
    cols += ranked[:1]
    return cols + [m for m in SUMMARY_TAIL if m in names and lb.df[f"{m}_mean"].notna().any()]


def summary(lb: Leaderboard) -> str:
    """One table per data set: rank (tied, unreliable), model and summary_columns;
    accuracies with their intervals, the rest as means."""
    cols = summary_columns(lb)
    lines: List[str] = []
    for ds, sub in lb.datasets():
        rows = []
        for _, r in sub.iterrows():
            row = [cells.rank_text(r["rank"], r["tied_with_above"], r.get("unreliable")), r["model"]]
            row += [value_cell(m, r) if m.endswith(("_acc", "_rate")) else cells.fmt_cell(m, r[f"{m}_mean"], r[f"{m}_std"])
                    for m in cols]
            rows.append(row)
        lines += [f"**{ds}**", ""] + md_table(["rank", "model"] + [lb.info.title(m) for m in cols], rows) + [""]
    return "\n".join(lines)


def publish(results_dir, dest, command: str, note: str = "") -> Dict[str, Path]:
    results_dir, dest = Path(results_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ids = copy_runs(results_dir, dest)
    atomic.write_text(dest / ABOUT, about_text(command, note, ids, provenance(dest)))
    return rebuild(dest)


def rebuild(dest) -> Dict[str, Path]:
    """A published folder's tables, CSVs and plots built again from its
    committed records (after a change to the leaderboard; PUBLISHED.md stays)."""
    dest = Path(dest)
    if not list((dest / "runs").glob("*/record.json")):
        raise FileNotFoundError(f"no run records under {dest}/runs/: not a published folder")
    written = drop_pdfs(build_leaderboard(dest, formats=FORMATS))
    written["summary"] = atomic.write_text(dest / SUMMARY, summary(assemble(dest)))
    return written


def comparable(markdown: str) -> str:
    """A leaderboard.md without the line naming the folder it was built in."""
    return "\n".join(line for line in markdown.splitlines() if not line.startswith(BUILT_FROM))


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir", metavar="RESULTS_DIR", nargs="?")
    p.add_argument("dest", metavar="DEST", help="the folder to publish into, e.g. results/published/quickstart")
    p.add_argument("--command", help="the command that made the results (quoted); needed unless --rebuild")
    p.add_argument("--note", default="", help="a paragraph for PUBLISHED.md")
    p.add_argument("--rebuild", action="store_true",
                   help="build DEST's tables and plots again from its committed records (no RESULTS_DIR)")
    args = p.parse_args(argv)
    if args.rebuild == bool(args.results_dir) or (not args.rebuild and not args.command):
        p.error("give RESULTS_DIR DEST --command CMD to publish, or --rebuild DEST")
    try:
        written = rebuild(args.dest) if args.rebuild else publish(args.results_dir, args.dest, args.command,
                                                                   args.note)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
