"""Which metric columns are sanity points, not results to rank by.

The evaluation protocol (docs/evaluators.md, "Sanity checks") adds points that
check the attacks rather than measure the model: a white-box attack at a large
L-inf eps (>= 0.5, where accuracy must fall to about chance) and a black-box
attack bounded to the threat model's eps (bounded SimBA, which must not beat
the white-box attacks). The tables show them apart from the ranking, so the
ranked table holds what ranks and stays narrow.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from .board import Leaderboard

#: attacks/checks.py LARGE_EPS: from this L-inf radius every image can be moved to the same grey one
SANITY_EPS = 0.5
_BLACKBOX_SUFFIXES = ("_success_rate", "_avg_queries", "_saturated_frac")


def _bounded_blackbox(lb: Leaderboard) -> List[str]:
    """Black-box evaluators whose records bound them to an eps (SimBA's linf_bound)."""
    out = []
    for name in lb.info.blackbox:
        evs = [r.evaluations.get(name) for r in lb.runs]
        if any(isinstance(ev, dict) and ev.get("linf_bound") is not None for ev in evs):
            out.append(name)
    return out


def sanity_metrics(lb: Leaderboard) -> List[str]:
    """The metric columns that are sanity points (never the one the table is ranked by)."""
    out = [m for m in lb.info.whitebox if (lb.info.eval_eps.get(m) or 0.0) >= SANITY_EPS]
    bounded = _bounded_blackbox(lb)
    out += [m for m in lb.info.names if any(m == f"{n}{s}" for n in bounded for s in _BLACKBOX_SUFFIXES)]
    return [m for m in out if m != lb.rank_metric]


def split_sanity(lb: Leaderboard, metrics: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(metrics that stay in the ranked table, the sanity points among them), each in the given order."""
    sanity = set(sanity_metrics(lb))
    return [m for m in metrics if m not in sanity], [m for m in metrics if m in sanity]


SANITY_CAPTION = ("Sanity points, not ranked: they check the attacks, not the model. A white-box attack at "
                  f"eps ≥ {SANITY_EPS:g} should bring accuracy to about chance; a black-box attack bounded to the "
                  "threat model's eps (bounded SimBA) should break no more examples than the white-box attacks. "
                  "A failure is a flag on the run (see \"Missing, failed, flagged\").")
