"""SimBA (Guo et al., ICML 2019) as an evaluator: the algorithm and its scores
are in ``attacks._simba_core`` (re-exported here); this module picks each
image's coordinate order, batches the images and summarises the outcome.

Orders: image i (its position among the images attacked) gets
``torch.randperm(n_coords)`` from a generator seeded from (evaluator seed, i),
so its order depends neither on the batch size nor on the process that
attacks it.

Batches: the images are attacked in consecutive chunks of ``batch_size``
(SimBA's own option, else the protocol's); within a chunk every image starts
at once and leaves the pool when it stops. The pool is not refilled from the
next chunk, so that a chunk's outcome depends on the chunk alone and chunks
can be split between processes.

The batch size: a model's float32 outputs for one image can differ in the
last bits with the batch it is computed in (other kernels, other summation
orders, ConvNorm's rfft2). A step that changes no pixel ties in exact
arithmetic and is never accepted, and every query is built the same way
(``_simba_core``), so that noise no longer decides ties; only a real step
whose score change is within rounding could still part two batch sizes.
``tests/test_simba_batch_invariance.py`` checks batch 1 against batch 4 for
every normalizer. Per-image outcomes are reproducible at one batch size, on
one rank or several.

The step rule (``step_rule``): ``minus_first``, the paper's Algorithm 1
(default), or ``best_of_both``, the authors' batched code, which made the
ConvNorm paper's Table 2 (``configs/simba.yaml``); docs/evaluators.md.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from . import checks
from ._simba_core import SCORES, STEP_RULES, dct_matrix, n_coordinates, simba_attack  # noqa: F401
from .base import (BatchOutcome, EvalOutcome, Evaluator, as_choice, as_float, as_int, fraction_text,
                   perturbation_norms)
from .registry import register_evaluator

__all__ = ["SCORES", "STEP_RULES", "SimBA", "dct_matrix", "n_coordinates", "simba_attack", "success_curve",
           "summarize"]

DEFAULTS = {"basis": "pixel", "step": 0.2, "max_iters": None, "linf_bound": None, "freq_dims": None,
            "score": "log_odds", "n_images": 1000, "step_rule": "minus_first"}
SCORE_TEXT = {"log_odds": "log-odds of the true class from the logits in float64",
              "prob": "softmax probability of the true class (the reference's score; saturates at 1.0)"}
STEP_RULE_TEXT = {
    "minus_first": "the paper's Algorithm 1: the plus step is tried only when the minus step is not accepted",
    "best_of_both": "the authors' batched code (simba_batch): both steps queried every iteration, the plus step "
                    "accepted when below the current score and the minus step's; queries counted as they count "
                    "them (1 when the minus step is accepted, else 2)"}


def success_curve(queries: np.ndarray, success: np.ndarray, max_queries: int, points: int = 101) -> Dict[str, list]:
    """Cumulative success rate (% of all attacked images broken within q queries)."""
    grid = np.unique(np.linspace(0, max(1, max_queries), points).round().astype(np.int64))
    n = max(1, len(queries))
    broken_at = np.sort(queries[success])
    rate = 100.0 * np.searchsorted(broken_at, grid, side="right") / n
    return {"queries": grid.tolist(), "success_rate": [float(r) for r in rate]}


def summarize(queries: np.ndarray, success: np.ndarray, l2: np.ndarray, linf: np.ndarray) -> Dict[str, object]:
    n = len(queries)
    won = success.astype(bool)

    def mean_or_none(values):
        return float(np.mean(values)) if len(values) else None

    return {
        "n_images": int(n),
        "success_rate": float(100.0 * won.mean()) if n else None,
        "avg_queries": mean_or_none(queries),
        "avg_queries_success": mean_or_none(queries[won]),
        "median_queries_success": float(np.median(queries[won])) if won.any() else None,
        "mean_l2": mean_or_none(l2[won]),
        "mean_linf": mean_or_none(linf[won]),
    }


@register_evaluator("simba")
class SimBA(Evaluator):
    """Options: ``basis`` ("pixel" | "dct"), ``step`` (0.2), ``max_iters`` (None = number of
    coordinates), ``linf_bound`` (None = unbounded), ``freq_dims`` (DCT only: keep the lowest
    freq_dims x freq_dims frequencies; None = all), ``score`` ("log_odds" | "prob"),
    ``n_images`` (1000 correctly classified images, picked by the protocol), ``batch_size``
    (None = the protocol's), ``step_rule`` ("minus_first" | "best_of_both": which of the plus and
    minus steps are tried, ``attacks._simba_core``). Name ``simba`` / ``simba_dct`` plus non-default
    options (``simba_step0p4``, ``simba_scoreprob``, ``simba_step_rulebest_of_both``); n_images and
    batch_size do not enter the name."""

    kind = "blackbox"
    select_correct = True
    headline = ("success_rate", "avg_queries", "avg_queries_success", "median_queries_success",
                "mean_l2", "mean_linf", "saturated_frac")

    def __init__(self, *, basis=DEFAULTS["basis"], step=DEFAULTS["step"], max_iters=DEFAULTS["max_iters"],
                 linf_bound=DEFAULTS["linf_bound"], freq_dims=DEFAULTS["freq_dims"], score=DEFAULTS["score"],
                 n_images=DEFAULTS["n_images"], batch_size: Optional[int] = None,
                 step_rule=DEFAULTS["step_rule"], name: Optional[str] = None):
        super().__init__(name=name)
        self.basis = as_choice(basis, "simba: basis", ("pixel", "dct"))
        self.step = as_float(step, "simba: step")
        if self.step <= 0:
            raise ValueError(f"simba: step must be > 0, got {self.step}")
        self.max_iters = None if max_iters is None else as_int(max_iters, "simba: max_iters")
        self.linf_bound = None if linf_bound is None else as_float(linf_bound, "simba: linf_bound")
        if self.linf_bound is not None and self.linf_bound <= 0:
            raise ValueError(f"simba: linf_bound must be > 0 (or null for none), got {self.linf_bound}")
        self.eps = self.linf_bound
        if freq_dims is not None and self.basis != "dct":
            raise ValueError("simba: freq_dims applies to basis 'dct' only")
        self.freq_dims = None if freq_dims is None else as_int(freq_dims, "simba: freq_dims")
        self.score = as_choice(score, "simba: score", SCORES)
        self.step_rule = as_choice(step_rule, "simba: step_rule", STEP_RULES)
        self.n_images = None if n_images is None else as_int(n_images, "simba: n_images")
        self.batch_size = None if batch_size is None else as_int(batch_size, "simba: batch_size")
        self._n_coords: Optional[int] = None

    def base_name(self):
        return "simba" if self.basis == "pixel" else "simba_dct"

    def name_options(self):
        return [("step", self.step, DEFAULTS["step"], ""), ("max_iters", self.max_iters, None, ""),
                ("linf_bound", self.linf_bound, None, "pixel"), ("freq_dims", self.freq_dims, None, ""),
                ("score", self.score, DEFAULTS["score"], ""), ("step_rule", self.step_rule, DEFAULTS["step_rule"], "")]

    def _cap(self) -> Optional[int]:
        return self._n_coords if self.max_iters is None else self.max_iters

    def settings(self):
        return {"basis": self.basis, "step": self.step, "max_iters": self._cap(), "n_coords": self._n_coords,
                "linf_bound": self.linf_bound, "linf_bound_text": fraction_text(self.linf_bound),
                "freq_dims": self.freq_dims, "n_images": self.n_images,
                "norm": "Linf" if self.linf_bound is not None else None, "eps": self.linf_bound,
                "score": self.score, "score_text": SCORE_TEXT[self.score],
                "step_rule": self.step_rule, "step_rule_text": STEP_RULE_TEXT[self.step_rule],
                "order": "one random coordinate order per image, seeded from (evaluator seed, image position)"}

    def batch_size_for(self, batch_size):
        return self.batch_size or batch_size

    def prepare(self, model, x, y):
        self._n_coords = n_coordinates(self.basis, tuple(x.shape[1:]), self.freq_dims)
        if self.max_iters is not None and self.max_iters > self._n_coords:
            raise ValueError(f"simba: max_iters {self.max_iters} exceeds the number of coordinates {self._n_coords}")

    def empty_columns(self):
        return {"correct": np.zeros(0, bool), "queries": np.zeros(0, np.int64), "l2": np.zeros(0),
                "linf": np.zeros(0), "saturated": np.zeros(0, bool)}

    def attack_batch(self, model, x, y, *, generator, example_seeds) -> BatchOutcome:
        cap = self._cap()
        orders = torch.stack([torch.randperm(self._n_coords, generator=torch.Generator().manual_seed(int(s)))[:cap]
                              for s in example_seeds]) if len(x) else torch.zeros((0, cap), dtype=torch.long)
        result = simba_attack(model, x, y, step=self.step, max_iters=cap, basis=self.basis,
                              linf_bound=self.linf_bound, freq_dims=self.freq_dims, batch_size=max(1, len(x)),
                              score=self.score, orders=orders, step_rule=self.step_rule)
        linf, l2 = perturbation_norms(x, result.x_adv)
        per_example = {"correct": ~result.success.cpu().numpy(), "queries": result.queries.cpu().numpy(),
                       "l2": l2.cpu().numpy(), "linf": linf.cpu().numpy(),
                       "saturated": result.saturated.cpu().numpy()}
        totals = {"validity": checks.validate_adversarial(x, result.x_adv, self.linf_bound, "Linf"),
                  "iterations": int(result.iterations.sum())}
        return BatchOutcome(per_example=per_example, totals=totals)

    def finish(self, per_example, totals) -> EvalOutcome:
        success = ~per_example["correct"].astype(bool)
        queries = per_example["queries"]
        metrics: Dict[str, Any] = summarize(queries, success, per_example["l2"], per_example["linf"])
        saturated = per_example["saturated"]
        # a fraction in [0, 1], not a percentage
        metrics["saturated_frac"] = float(saturated.mean()) if len(saturated) else 0.0
        cap = self._cap() or 0
        info = dict(self.describe(), validity=dict(totals.get("validity") or {}),
                    iterations_total=int(totals.get("iterations", 0)),
                    curve=success_curve(queries, success, 2 * cap))
        return EvalOutcome(per_example=per_example, metrics=metrics, info=info)
