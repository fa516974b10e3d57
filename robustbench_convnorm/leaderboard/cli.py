"""python -m robustbench_convnorm.leaderboard RESULTS_DIR [options]: see docs/leaderboard.md."""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional, Sequence

from .build import OutputError, build_leaderboard
from .records import LeaderboardWarning
from .renderers import renderer_names


PROG = "python -m robustbench_convnorm.leaderboard"


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog,
                                description="Build the leaderboard (page, tables, plots) from "
                                            "RESULTS_DIR/runs/*/record.json.")
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.add_argument("--rank-by", metavar="METRIC", default=None,
                   help="metric to rank by, e.g. pgd20_acc, clean_acc, simba_success_rate "
                        "(default: the strongest white-box attack's accuracy)")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: RESULTS_DIR)")
    p.add_argument("--format", metavar="NAMES", default=None,
                   help=f"comma-separated output formats (default: all of {', '.join(renderer_names())}); "
                        "the CSVs are always written, the plots unless --no-plots")
    p.add_argument("--export", metavar="NAME", action="append", default=[],
                   help="also export one entry per model in another leaderboard's format: robustbench")
    p.add_argument("--no-plots", action="store_true", help="skip the plots (faster; the page has none)")
    p.add_argument("--alpha", type=float, default=0.05, metavar="A",
                   help="significance level of the tests behind 'tied' (default 0.05)")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    args = parser(prog).parse_args(argv)
    if not 0 < args.alpha < 1:
        print(f"error: --alpha {args.alpha} is not between 0 and 1; use e.g. --alpha 0.05", file=sys.stderr)
        return 2
    formats = None if args.format is None else [f.strip() for f in args.format.split(",") if f.strip()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LeaderboardWarning)
        try:
            written = build_leaderboard(args.results_dir, args.out, args.rank_by, formats=formats,
                                        export=args.export, alpha=args.alpha, plots=not args.no_plots)
            code = 0
        except (FileNotFoundError, ValueError, OutputError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            code, written = 2, {}
    for w in caught:
        if issubclass(w.category, LeaderboardWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    for path in written.values():
        print(path)
    return code
