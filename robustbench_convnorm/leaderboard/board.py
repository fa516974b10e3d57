"""One ranked leaderboard: everything a renderer, a plot or an export reads.

    lb = assemble(results_dir, rank_by=None)
    lb.df          # one row per model, ranked, with intervals and the ties
    lb.groups      # the models with their runs
    lb.settings    # the evaluation settings behind the numbers
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pandas as pd

from . import stats
from .groups import Group, make_groups
from .metrics import MetricInfo, discover_metrics
from .ranking import choose_rank_metric, mark_ties, rank_frame
from .records import Run, load_runs
from .settings import Settings, collect
from .table import groups_frame, runs_frame


@dataclass
class Leaderboard:
    results_dir: Path
    runs: List[Run]
    skipped: List[Tuple[Path, str]]
    info: MetricInfo
    groups: List[Group]
    df: pd.DataFrame  # ranked models
    runs_df: pd.DataFrame
    rank_metric: Optional[str]
    ranked_by_default: bool
    settings: Settings
    alpha: float = stats.ALPHA
    plots: Dict[str, Path] = field(default_factory=dict)  # filled by the build: plot key -> PNG

    def group(self, key) -> Group:
        return self._by_key[key]

    def __post_init__(self):
        self._by_key = {g.key: g for g in self.groups}

    def ranked_groups(self) -> List[Group]:
        """The models in table order (rank within dataset, unranked last)."""
        return [self._by_key[k] for k in self.df["_gkey"]]

    def datasets(self):
        """(dataset, that dataset's rows of df) in order."""
        return list(self.df.groupby(self.df["dataset"].fillna("?"), sort=True))


def assemble(results_dir, rank_by: Optional[str] = None, alpha: float = stats.ALPHA) -> Leaderboard:
    """Read, group, rank and test. Raises ValueError for an unknown rank_by."""
    results_dir = Path(results_dir)
    runs, skipped = load_runs(results_dir)
    info = discover_metrics(runs)
    groups = make_groups(runs, info)
    df = groups_frame(groups, info, alpha)
    rank_metric = choose_rank_metric(info, df, rank_by)
    df = mark_ties(rank_frame(df, rank_metric), groups, rank_metric, alpha)
    return Leaderboard(results_dir=results_dir, runs=runs, skipped=skipped, info=info, groups=groups, df=df,
                       runs_df=runs_frame(runs, groups, info, results_dir), rank_metric=rank_metric,
                       ranked_by_default=rank_by is None, settings=collect(groups, info), alpha=alpha)
