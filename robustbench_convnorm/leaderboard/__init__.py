"""Leaderboard tables, page, plots and exports, built from run records alone.

    python -m robustbench_convnorm.leaderboard RESULTS_DIR [--rank-by METRIC] [--out DIR]
        [--format html,md,tex] [--export robustbench] [--alpha 0.05]

reads ``RESULTS_DIR/runs/*/record.json`` (and each run's per_example.csv and
train_log.csv) and writes leaderboard.html (the page to open first),
leaderboard.md, leaderboard.tex, leaderboard.csv, leaderboard_runs.csv and the
plots (PNG and PDF). docs/leaderboard.md documents every file and column.

One module per job: records (reading), groups (rows and seeds), stats
(intervals and tests), table and ranking, settings and cells (shared
formatting), one ``render_<format>.py`` per output format (renderers.py finds
them), plots, export, build and cli.
"""
from .build import OutputError, build_leaderboard
from .cli import main
from .records import LeaderboardWarning, load_runs

__all__ = ["build_leaderboard", "load_runs", "main", "LeaderboardWarning", "OutputError"]
