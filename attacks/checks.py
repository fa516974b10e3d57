"""The sanity checks, run automatically by the protocol; docs/evaluators.md
("Sanity checks") defines each one and its flag.

Two levels:

* errors (raise :class:`StateChangedError`, from ``attacks._state``): the
  model's state (parameters, buffers, plain tensor attributes) changed during
  an attack, or an attack left the model out of eval mode. Such a run's
  numbers mean nothing.
* flags (short strings collected in a list, written on the run's record):
  everything else, each with a note saying what was measured
  (``EvaluationReport.flag_notes``). The model probes are in
  ``attacks._probes``; the checks on the outcomes are here.

Comparisons "A should not beat B" between two evaluators are paired: on the
examples both saw, let ``a`` count those only A leaves correct and ``b`` those
only B leaves correct. Under "A is no stronger nor weaker than B" each of
these ``a + b`` discordant examples is equally likely to go either way, so
the flag fires when the exact one-sided binomial tail
``P(X >= a | X ~ Bin(a + b, 1/2))`` is below ``alpha`` (0.01 by default;
the protocol's ``alpha``). Both attacks are random, so a few examples either
way are chance, not a broken evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ._probes import probe_model  # noqa: F401
from ._state import StateChangedError, assert_eval_mode, assert_state_unchanged, state_fingerprint  # noqa: F401

__all__ = [
    "ALPHA", "APGD_TYPES", "CHANCE_MARGIN", "EPS_TOL", "LARGE_EPS", "MASKING_MARGIN", "Result", "StateChangedError",
    "add_counts", "assert_eval_mode",
    "at_chance", "assert_state_unchanged", "binomial_tail", "broken_in_threat_model", "comparison_flags",
    "in_threat_model", "infer_threat_model", "masking_flags", "outcome_flags", "paired_excess", "probe_model",
    "raw_correct", "state_fingerprint",
    "validate_adversarial", "validity_flags", "worst_case_correct",
]

#: float tolerance on the eps-ball (x + eps rounds to within a few ulp of 1.0)
EPS_TOL = 1e-6
#: L_inf radius from which accuracy should be near chance (every image can become grey)
LARGE_EPS = 0.5
#: points above the largest class share still tolerated at LARGE_EPS
CHANCE_MARGIN = 5.0
#: significance level of the paired comparisons
ALPHA = 0.01
#: points by which AutoAttack (or its APGD part) may leave fewer examples correct
#: than PGD at the same eps before the gap is called masking. On sound models
#: AutoAttack is a few points stronger than PGD-20 (RobustBench's models: about
#: 1 to 4); a larger gap, significant in the paired test, is the mark of a loss
#: surface that fools PGD's cross-entropy steps (docs/evaluators.md, check 8).
MASKING_MARGIN = 5.0
#: evaluator types that PGD is held to in the masking check: AutoAttack (any
#: version) and its APGD-CE + APGD-T part
APGD_TYPES = ("autoattack", "apgd_ce_t")


# ---------------------------------------------------------------------------
# validity of adversarial inputs (called by the attack wrappers on each batch)

def validate_adversarial(x: torch.Tensor, x_adv: torch.Tensor, eps: Optional[float] = None,
                         norm: str = "Linf", tol: float = EPS_TOL) -> Dict[str, int]:
    """Counts of examples whose adversarial input is outside the eps-ball,
    outside [0, 1], or not finite. ``eps=None`` skips the ball."""
    flat = x_adv.detach().flatten(1)
    finite = torch.isfinite(flat).all(1)
    outside = ((flat < 0) | (flat > 1)).any(1)          # NaN is counted as non-finite only
    counts = {"nonfinite": int((~finite).sum()), "outside_range": int(outside.sum()), "outside_ball": 0}
    if eps is not None:
        delta = (x_adv.detach().double() - x.detach().double()).flatten(1)
        size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
        counts["outside_ball"] = int((size > eps + tol).sum())
    return counts


def add_counts(total: Dict[str, int], more: Dict[str, int]) -> Dict[str, int]:
    for key, value in more.items():
        total[key] = total.get(key, 0) + int(value)
    return total


def validity_flags(name: str, counts: Dict[str, int]) -> List[Tuple[str, str]]:
    out = []
    if counts.get("outside_ball", 0):
        out.append((f"{name}:outside_eps_ball", f"{counts['outside_ball']} adversarial inputs outside the eps-ball"))
    if counts.get("outside_range", 0):
        out.append((f"{name}:outside_0_1", f"{counts['outside_range']} adversarial inputs outside [0, 1]"))
    if counts.get("nonfinite", 0):
        out.append((f"{name}:nan_input", f"{counts['nonfinite']} adversarial inputs hold NaN/inf"))
    return out


# ---------------------------------------------------------------------------
# one evaluator's outcome, as the checks see it

@dataclass
class Result:
    name: str
    type: str
    kind: str
    settings: Dict[str, Any]
    metrics: Dict[str, Any]
    index: np.ndarray                      # test-set index of each example
    per_example: Dict[str, np.ndarray]
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def eps(self) -> Optional[float]:
        return self.settings.get("eps")

    @property
    def norm(self) -> str:
        return self.settings.get("norm") or "Linf"


def outcome_flags(r: Result) -> List[Tuple[str, str]]:
    """Flags about one evaluator's own measurement (raised even without ``checks``)."""
    out = validity_flags(r.name, r.info.get("validity", {}))
    frac = r.metrics.get("saturated_frac")
    if r.type == "simba" and r.settings.get("score") == "prob" and frac:
        n = len(r.per_example["correct"])
        out.append((f"{r.name}:saturated",
                    f"{100 * frac:.1f}% of {n} attacked images start with a true-class probability of exactly "
                    "1.0 in float32: every step ties there and SimBA stalls, so its success rate measures the "
                    "logit scale as much as robustness (score: log_odds does not saturate)"))
    return out


def raw_correct(r: Result) -> np.ndarray:
    """Per example, whether the model is right on ``r``'s (last) input itself:
    ``adv_correct`` where the evaluator records it, else ``correct``. Unlike
    ``correct`` it is not and-ed with the clean outcome, so an attack that
    turns wrong answers right shows here."""
    return np.asarray(r.per_example.get("adv_correct", r.per_example["correct"]), dtype=bool)


def _common(a: Result, b: Result) -> Tuple[np.ndarray, np.ndarray]:
    _, ia, ib = np.intersect1d(a.index, b.index, assume_unique=True, return_indices=True)
    return ia, ib


# ---------------------------------------------------------------------------
# the paired test

def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2) (scipy's survival function, as
    ``at_chance``; within 1e-12 relative of the exact sum for n <= 10000)."""
    from scipy.stats import binom

    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(binom.sf(k - 1, n, 0.5))


def at_chance(correct: np.ndarray, class_share: float, alpha: float) -> Optional[str]:
    """A note when ``correct`` is not significantly above ``class_share`` (%):
    the one-sided exact binomial tail P(X >= k | X ~ Bin(n, share)) is at least alpha."""
    from scipy.stats import binom

    n, k = len(correct), int(correct.sum())
    p = float(binom.sf(k - 1, n, class_share / 100.0))
    if p < alpha:
        return None
    return (f"clean accuracy {100.0 * k / n:.2f}% on {n} examples is not above the largest class's share "
            f"{class_share:.2f}% (one-sided exact binomial p = {p:.2g} >= alpha {alpha:g}): the model is no "
            f"better than always answering one class, so its robust accuracies measure nothing")


def paired_excess(first: Result, second: Result, alpha: float, *, first_correct: Optional[np.ndarray] = None,
                  second_correct: Optional[np.ndarray] = None, what: str = "") -> Optional[str]:
    """A note when ``first`` (expected at most as accurate as ``second``) leaves
    significantly more of their common examples correct; else None.
    ``*_correct`` replace the evaluators' ``correct`` columns (aligned with their index)."""
    ia, ib = _common(first, second)
    if not len(ia):
        return None
    fa = first.per_example["correct"] if first_correct is None else first_correct
    sb = second.per_example["correct"] if second_correct is None else second_correct
    a = np.asarray(fa[ia], dtype=bool)
    b = np.asarray(sb[ib], dtype=bool)
    only_first, only_second = int((a & ~b).sum()), int((~a & b).sum())
    p = binomial_tail(only_first, only_first + only_second)
    if only_first > only_second and p < alpha:
        return (f"{first.name} {100.0 * a.mean():.2f}% > {second.name} {100.0 * b.mean():.2f}% on {len(ia)} "
                f"common examples{what}: {only_first} stay correct only under {first.name}, {only_second} only "
                f"under {second.name} (one-sided exact binomial p = {p:.2g} < alpha {alpha:g})")
    return None


# ---------------------------------------------------------------------------
# the threat model and the per-example worst case

def infer_threat_model(results: Sequence[Result]) -> Optional[Tuple[str, float]]:
    """(norm, eps) held by the most white-box evaluators (ties: the first
    listed); None when no white-box evaluator has an eps."""
    counts: Dict[Tuple[str, float], int] = {}
    for r in results:
        if r.kind == "whitebox" and r.eps is not None:
            key = next((k for k in counts if k[0] == r.norm and abs(k[1] - r.eps) <= 1e-9), (r.norm, float(r.eps)))
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return next(k for k, v in counts.items() if v == best)


def in_threat_model(r: Result, threat: Optional[Tuple[str, float]]) -> bool:
    """Whether every input ``r`` tried lies in the threat model's ball."""
    if r.kind == "clean":
        return True
    if threat is None or r.eps is None:
        return False
    return r.norm == threat[0] and r.eps <= threat[1] + EPS_TOL


def broken_in_threat_model(r: Result, threat: Optional[Tuple[str, float]]) -> Optional[np.ndarray]:
    """Per example of ``r``: broken with a perturbation inside the threat
    model's ball. None when ``r`` says nothing about the threat model."""
    broken = ~np.asarray(r.per_example["correct"], dtype=bool)
    if threat is None:
        # no threat model: white-box attacks count as they are (the run's own
        # eps), black-box ones are not in any ball
        return broken if r.kind == "whitebox" else None
    norm, eps = threat
    size = r.per_example.get("linf" if norm == "Linf" else "l2")
    if size is not None:
        return broken & (np.asarray(size, dtype=np.float64) <= eps + EPS_TOL)
    if r.eps is None and r.kind == "whitebox":
        return broken                       # a white-box evaluator with no radius of its own
    return broken if in_threat_model(r, threat) else None


def worst_case_correct(results: Sequence[Result], threat: Optional[Tuple[str, float]] = None, *,
                       kinds: Sequence[str] = ("whitebox", "blackbox")) -> Tuple[np.ndarray, np.ndarray]:
    """(index, survived): the examples the clean evaluator saw (sorted test-set
    indices; without one, those every white-box evaluator saw) and, per
    example, whether it is clean-correct and no attack of ``kinds`` broke it
    inside the threat model's ball. An attack that did not see an example
    (SimBA on its subset) does not count for it. The worst-case accuracy is the
    mean of ``survived``, not a minimum of per-attack means. ``threat=None``:
    the one ``infer_threat_model(results)`` gives."""
    if threat is None:
        threat = infer_threat_model(results)
    clean = next((r for r in results if r.kind == "clean"), None)
    if clean is not None:
        base = np.sort(clean.index)
    else:
        white = [r for r in results if r.kind == "whitebox"]
        if not white:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        base = np.sort(white[0].index)
        for r in white[1:]:
            base = np.intersect1d(base, r.index, assume_unique=True)
    survived = np.ones(len(base), dtype=bool)
    for r in results:
        if r.kind == "clean":
            lost = ~np.asarray(r.per_example["correct"], dtype=bool)
        elif r.kind in kinds:
            lost = broken_in_threat_model(r, threat)
            if lost is None:
                continue
        else:
            continue
        _, in_base, in_r = np.intersect1d(base, r.index, assume_unique=True, return_indices=True)
        survived[in_base] &= ~lost[in_r]
    return base, survived


# ---------------------------------------------------------------------------
# comparisons between evaluators (run once after the attacks)

_EPS_FAMILY_FREE = ("eps", "eps_text", "step", "step_text")


def _steps_text(r: Result) -> str:
    step = r.settings.get("step")
    shown = r.settings.get("step_text") or (f"{step:.3g}" if isinstance(step, float) else str(step))
    return f"{r.settings.get('steps')} steps of {shown}"


def _same_eps(a: Result, b: Result) -> bool:
    return a.eps is not None and b.eps is not None and abs(a.eps - b.eps) < 1e-9 and a.norm == b.norm


def comparison_flags(results: Sequence[Result], *, n_classes: Optional[int] = None,
                     class_share: Optional[float] = None, alpha: float = ALPHA) -> List[Tuple[str, str]]:
    """Flags from comparing evaluators (docs/evaluators.md, checks 0 to 5 and 8).

    ``class_share`` is the largest class's share (in %) of the evaluated
    examples; ``alpha`` the significance level of the paired comparisons."""
    out: List[Tuple[str, str]] = []
    by_type: Dict[str, List[Result]] = {}
    for r in results:
        by_type.setdefault(r.type, []).append(r)
    clean = next((r for r in results if r.kind == "clean"), None)
    white = [r for r in results if r.kind == "whitebox"]
    black = [r for r in results if r.kind == "blackbox"]

    for r in results:
        out.extend(outcome_flags(r))

    # 0. the model learned: clean accuracy above what always answering the
    #    largest class gets; below it, every robust accuracy measures nothing
    if clean is not None and class_share is not None and len(clean.index):
        note = at_chance(np.asarray(clean.per_example["correct"], dtype=bool), class_share, alpha)
        if note:
            out.append((f"{clean.name}:at_chance", note))

    # 1. robust <= clean. A white-box attack is compared on its raw outcomes:
    #    "correct clean and under attack" is a subset of "correct clean" and could
    #    never exceed it, so an attack that helps the model would go unseen. A
    #    black-box evaluator is compared on what it reports (random noise may
    #    honestly push an example at the decision boundary to the right side)
    if clean is not None:
        for r in white:
            note = paired_excess(r, clean, alpha, first_correct=raw_correct(r),
                                 what=" (the attack's raw outcomes against clean: the attack helps the model)")
            if note:
                out.append((f"{r.name}>clean", note))
        for r in black:
            note = paired_excess(r, clean, alpha)
            if note:
                out.append((f"{r.name}>clean", note))

    # 2. iterative beats single-step; more steps at the same eps not weaker, whatever the step sizes
    for p in by_type.get("pgd", []):
        for f in by_type.get("fgsm", []):
            if _same_eps(p, f):
                note = paired_excess(p, f, alpha)
                if note:
                    out.append((f"{p.name}>{f.name}", note))
    pgds = by_type.get("pgd", [])
    for a in pgds:
        for b in pgds:
            if _same_eps(a, b) and a.settings.get("steps", 0) > b.settings.get("steps", 0) \
                    and a.settings.get("restarts", 1) >= b.settings.get("restarts", 1):
                steps = f" ({_steps_text(a)} against {_steps_text(b)})"
                note = paired_excess(a, b, alpha, what=steps)
                if note:
                    out.append((f"{a.name}>{b.name}", note))

    # 3. monotone in eps within a family (same type and every setting but eps and
    #    the step size, which is usually scaled with eps) ...
    families: Dict[Tuple, List[Result]] = {}
    for r in white:
        if r.eps is None:
            continue
        key = (r.type,) + tuple(sorted((k, repr(v)) for k, v in r.settings.items() if k not in _EPS_FAMILY_FREE))
        families.setdefault(key, []).append(r)
    for members in families.values():
        members = sorted(members, key=lambda r: r.eps)
        for small, big in zip(members, members[1:]):
            if big.eps > small.eps + 1e-12:
                note = paired_excess(big, small, alpha)
                if note:
                    out.append((f"{big.name}>{small.name}", note))
    # ... and about chance at a large eps: every image can be moved to the same grey image
    if class_share is not None:
        for r in white:
            if r.eps is not None and r.norm == "Linf" and r.eps >= LARGE_EPS:
                acc = 100.0 * r.per_example["correct"].mean() if len(r.index) else 0.0
                if acc > class_share + CHANCE_MARGIN:
                    out.append((f"{r.name}:above_chance",
                                f"{r.name} keeps {acc:.2f}% at eps {r.eps:g}; the largest class share is "
                                f"{class_share:.2f}% (at eps >= {LARGE_EPS} every input can become the same grey image)"))

    # 4. white-box beats black-box, within the white-box threat model: a
    #    black-box break outside the white-box ball does not count. Every
    #    white-box attack must beat the random-noise baseline; the other
    #    black-box attacks (SimBA) are held to the iterative ones (PGD, AutoAttack)
    for b in black:
        for w in white:
            if w.eps is None or (b.type != "noise" and w.type not in ("pgd", *APGD_TYPES)):
                continue
            size = b.per_example.get("linf" if w.norm == "Linf" else "l2")
            if size is None:
                continue
            b_correct = np.asarray(b.per_example["correct"], dtype=bool) | (np.asarray(size) > w.eps + EPS_TOL)
            note = paired_excess(w, b, alpha, second_correct=b_correct,
                                 what=f" (breaks of {b.name} outside eps {w.eps:g} count as correct)")
            if note:
                out.append((f"{b.name}>{w.name}", note))

    # 5. loss rises along PGD
    for r in by_type.get("pgd", []):
        curve = r.info.get("loss_curve")
        if curve and len(curve) >= 2 and curve[-1] < curve[0]:
            out.append((f"{r.name}:loss_falls",
                        f"{r.name}'s mean loss fell from {curve[0]:.4g} to {curve[-1]:.4g}; check the step size"))

    # 8. PGD no weaker than AutoAttack (or its APGD part) beyond the masking margin
    out.extend(masking_flags(results, alpha))
    return out


def masking_flags(results: Sequence[Result], alpha: float = ALPHA,
                  margin: float = MASKING_MARGIN) -> List[Tuple[str, str]]:
    """``<pgd>><autoattack>`` where AutoAttack (any version: its APGD-CE +
    APGD-T part too) at the same eps and norm as the PGDs breaks
    significantly more of their common examples than every PGD there
    together (per example: broken by any of them; the paired test of
    ``paired_excess``) and by more than ``margin`` points: PGD's cross-entropy
    steps were fooled where APGD's step-size schedule and the DLR loss were
    not. The flag is named after the PGD with the most steps; a short PGD
    alone is not held to AutoAttack's 100 iterations."""
    out: List[Tuple[str, str]] = []
    pgds = [r for r in results if r.type == "pgd"]
    for a in (r for r in results if r.type in APGD_TYPES):
        same = [p for p in pgds if _same_eps(p, a)]
        if not same:
            continue
        index = a.index
        for p in same:
            index = np.intersect1d(index, p.index, assume_unique=True)
        if not len(index):
            continue
        survived = np.ones(len(index), dtype=bool)
        for p in same:
            _, _, ip = np.intersect1d(index, p.index, assume_unique=True, return_indices=True)
            survived &= np.asarray(p.per_example["correct"], dtype=bool)[ip]
        _, _, ia = np.intersect1d(index, a.index, assume_unique=True, return_indices=True)
        a_correct = np.asarray(a.per_example["correct"], dtype=bool)[ia]
        gap = 100.0 * (survived.mean() - a_correct.mean())
        if gap <= margin:
            continue
        head = max(same, key=lambda p: (p.settings.get("steps", 0) * p.settings.get("restarts", 1), p.name))
        pooled = Result(name=" + ".join(p.name for p in same) if len(same) > 1 else head.name, type="pgd",
                        kind="whitebox", settings=head.settings, metrics={}, index=index,
                        per_example={"correct": survived})
        note = paired_excess(pooled, a, alpha, what=f" at the same eps, a gap of {gap:.2f} points (> the masking "
                                                    f"margin {margin:g}): PGD is fooled, the evaluation masks "
                                                    "gradients")
        if note:
            out.append((f"{head.name}>{a.name}", note))
    return out
