"""Every pair of ranked models of a data set, tested as the table tests
neighbours (ranking.compare: the exact McNemar test on the per-example
outcomes of every common seed, pooled). The table marks only neighbours'
ties; a claim such as "A is more robust than C" needs this pair's own test.
No correction for the number of pairs: the reader sees how many there are."""
from __future__ import annotations

from typing import List

import pandas as pd

from . import stats
from .board import Leaderboard
from .ranking import compare

FILENAME = "pairwise.csv"
COLUMNS = ["dataset", "metric", "upper", "lower", "upper_rank", "lower_rank", "p", "tied", "test", "detail",
           "needed"]


def pairwise_frame(lb: Leaderboard, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """One row per pair of ranked models of a data set (unreliable ones have no
    rank and no row), the upper model ranked above the lower; empty without a
    ranking metric."""
    rows: List[dict] = []
    metric = lb.rank_metric
    if metric is None:
        return pd.DataFrame(columns=COLUMNS)
    for ds, frame in lb.datasets():
        ranked = frame[frame["rank"].notna()]
        entries = [(row["model"], int(row["rank"]), lb.group(row["_gkey"])) for _, row in ranked.iterrows()]
        for i, (up_name, up_rank, up) in enumerate(entries):
            for lo_name, lo_rank, lo in entries[i + 1:]:
                t = compare(up, lo, metric, alpha)
                rows.append({"dataset": ds, "metric": metric, "upper": up_name, "lower": lo_name,
                             "upper_rank": up_rank, "lower_rank": lo_rank, "p": t.p, "tied": t.tied,
                             "test": t.test, "detail": t.detail, "needed": t.needed})
    return pd.DataFrame(rows, columns=COLUMNS)
