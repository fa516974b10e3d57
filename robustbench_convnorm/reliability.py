"""Which sanity-check flags make an evaluation unreliable.

The evaluation protocol (attacks/checks.py, attacks/_probes.py) writes each
failed check as a short flag string on the run's record. Some flags say the
robust accuracy cannot be trusted at all: the attacks had no gradient to
follow, the model answered differently to the same input, an attack left
the ball, a stronger attack (or random noise) did worse than a weaker one.
Those are *severe*: a model with one of them is not ranked among the sound
ones (the leaderboard lists it apart, marked unreliable, and the RobustBench
export says ``unreliable: true`` with these flags). The others are warnings
about one measurement (a falling PGD loss, a saturated SimBA score, a model
at chance) and stay badges. docs/evaluators.md ("Which flags make an
evaluation unreliable") lists both.

No torch here: the leaderboard reads records without it.
"""
from __future__ import annotations

from typing import Iterable, List

__all__ = ["SEVERE_PROBES", "SEVERE_SUFFIXES", "WARNING_SUFFIXES", "is_severe", "unreliable_flags"]

#: model probes run before the attacks (attacks/_probes.py)
SEVERE_PROBES = frozenset({
    "zero_grad",          # no input gradient: gradient attacks cannot move (masking)
    "nan_grad",           # gradients hold NaN/inf: gradient attacks follow garbage
    "nan_output",         # outputs hold NaN/inf on clean inputs
    "nondeterministic",   # two identical forwards differ: randomised defence or a bug
    "batch_dependent",    # eval-mode outputs depend on the batch: attacked and scored models differ
    "not_logits",         # probabilities fed to a cross-entropy attack squash its gradients
})
#: per-evaluator flags ``<name>:<what>`` that invalidate the evaluation
SEVERE_SUFFIXES = (
    ":outside_eps_ball",  # an attack left the threat model's ball
    ":outside_0_1",       # or the image range
    ":nan_input",         # or produced NaN/inf inputs
    ":above_chance",      # a large-eps attack does not reach chance: masking
)
#: per-evaluator flags that are warnings about one measurement
WARNING_SUFFIXES = (":loss_falls", ":saturated", ":at_chance")


def is_severe(flag: str) -> bool:
    """Whether ``flag`` makes the evaluation unreliable.

    Severe: the probes of SEVERE_PROBES, the suffixes of SEVERE_SUFFIXES and
    every paired comparison ``A>B`` (an attack beaten by clean accuracy, by a
    weaker attack, by a smaller eps, by a black-box attack or noise, or PGD
    beaten by AutoAttack/APGD by more than the masking margin): each says the
    attacks did not find what a sound evaluation finds. Anything else (the
    warnings, ``lipschitz-error:...``, flags this module does not know) is a
    warning."""
    flag = str(flag).strip()
    if flag in SEVERE_PROBES:
        return True
    if flag.endswith(WARNING_SUFFIXES) or flag.startswith("lipschitz-error:"):
        return False
    if flag.endswith(SEVERE_SUFFIXES):
        return True
    return ">" in flag


def unreliable_flags(flags: Iterable[str]) -> List[str]:
    """The severe flags among ``flags`` (sorted, each once); empty when the evaluation is sound."""
    return sorted({str(f).strip() for f in flags if str(f).strip() and is_severe(f)})
