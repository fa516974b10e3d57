"""Intervals and tests for accuracies measured on a finite test set.

- One run: an accuracy of k correct out of n examples gets the Wilson score
  interval (it stays inside [0, 100] and behaves at 0 % and 100 %, where the
  normal approximation does not).
- Several seeds: the interval is the seed spread, mean ± t(1 - alpha/2, k - 1)
  · std / sqrt(k), the usual t interval for the mean over training seeds.
- Two models on the same examples: the exact McNemar test. Only the discordant
  examples (one model right, the other wrong) carry information; under "no
  difference" each is equally likely to go either way, so their split is
  Binomial(b + c, 1/2). Discordant counts of several seeds add up (each
  example of each seed is one independent pair under the null hypothesis).
  Several seeds are pooled this way rather than tested on the seed means:
  with 2-5 seeds a t test on means has 1-4 degrees of freedom and cannot
  separate models a few points apart, while the pooled test uses every
  example of every seed; the seeds are independent trainings, so pairs from
  different seeds are independent, and within one seed the test is the
  usual conditional one for two fixed models (docs/leaderboard.md).
- How many paired examples a separation needs: from the observed
  discordance rate and imbalance, the normal-approximation sample size of
  McNemar's test (Connor 1987) at the test's alpha and 80 % power; divided
  by the test images per seed it gives the seeds needed, divided by the
  seeds the test images needed (:func:`mcnemar_needed`).
- Two rates measured on different examples (SimBA attacks the images each
  model classifies correctly): Fisher's exact test on the 2x2 counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import stats as _st

ALPHA = 0.05

POWER = 0.8

__all__ = ["ALPHA", "POWER", "wilson_interval", "seed_interval", "mcnemar_exact", "mcnemar_needed", "fisher_rates",
           "PairTest"]


def wilson_interval(percent: float, n: float, alpha: float = ALPHA) -> Tuple[float, float]:
    """Wilson score interval, in percent, for ``percent`` % of ``n`` examples."""
    if n is None or not n > 0 or percent is None or math.isnan(percent):
        return math.nan, math.nan
    p = min(max(percent / 100.0, 0.0), 1.0)
    z = float(_st.norm.ppf(1 - alpha / 2))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return 100.0 * max(centre - half, 0.0), 100.0 * min(centre + half, 1.0)


def seed_interval(values: Sequence[float], alpha: float = ALPHA) -> Tuple[float, float]:
    """t interval of the mean over seeds; NaN with fewer than two values."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if len(v) < 2:
        return math.nan, math.nan
    half = float(_st.t.ppf(1 - alpha / 2, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return float(v.mean()) - half, float(v.mean()) + half


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    if b + c == 0:
        return 1.0
    return float(_st.binomtest(int(b), int(b + c), 0.5).pvalue)


def mcnemar_needed(b: int, c: int, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Paired examples (examples x seeds) McNemar's test needs to find, with
    probability ``power`` at level ``alpha``, a difference as large as the
    observed one: ``b`` and ``c`` discordant pairs out of ``n``. Connor's (1987)
    normal-approximation sample size, with discordance ``d = (b + c) / n`` and
    difference ``delta = (b - c) / n``:
    ``N = (z(1 - alpha/2) sqrt(d) + z(power) sqrt(d - delta^2))^2 / delta^2``.
    inf when the models disagree on no example or split their disagreements
    evenly (no observed effect to power), NaN without pairs."""
    if n <= 0:
        return math.nan
    d, delta = (b + c) / n, (b - c) / n
    if delta == 0:
        return math.inf
    za, zb = float(_st.norm.ppf(1 - alpha / 2)), float(_st.norm.ppf(power))
    return float(math.ceil((za * math.sqrt(d) + zb * math.sqrt(max(d - delta * delta, 0.0))) ** 2 / (delta * delta)))


def fisher_rates(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher exact p-value for k1/n1 against k2/n2 (unpaired)."""
    if min(n1, n2) <= 0:
        return math.nan
    return float(_st.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


@dataclass
class PairTest:
    """A model's comparison with the model ranked just above it."""

    p: float = math.nan
    test: str = ""  # "McNemar exact" | "Fisher exact" | ""
    detail: str = ""  # what was compared, or why nothing was
    tied: Optional[bool] = None  # None: not tested
    needed: float = math.nan  # paired examples (examples x seeds) a separation needs (mcnemar_needed)

    @classmethod
    def untested(cls, why: str) -> "PairTest":
        return cls(detail=why)

    @classmethod
    def of(cls, p: float, test: str, detail: str, alpha: float = ALPHA, needed: float = math.nan) -> "PairTest":
        return cls(p=p, test=test, detail=detail, tied=bool(p >= alpha), needed=needed)
