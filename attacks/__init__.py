"""Evaluators: clean accuracy, FGSM, PGD-k and AutoAttack (through torchattacks),
our batched SimBA, a random-noise probe; the sanity checks (``checks``) and
the evaluation protocol (``protocol.evaluate``), both defined in
docs/evaluators.md.

Each attack lives in its own module and registers itself; importing this
package registers the built-in ones. A new evaluator is one new file using
``@register_evaluator``; nothing else changes. See docs/evaluators.md.

The project imports this package as ``robustbench_convnorm.attacks``, a name
that a user's own attacks.py cannot shadow; ``import attacks`` gives the very
same modules where it finds this folder (robustbench_convnorm/_attacks_alias.py).
"""
import importlib
import pkgutil

import robustbench_convnorm  # noqa: F401  (its import finder makes robustbench_convnorm.attacks this package)

from .base import BatchOutcome, EvalOutcome, Evaluator
from .registry import EVALUATORS, get_evaluator, list_evaluators, register_evaluator

# Every module that is not infrastructure is an evaluator: import them all so
# that they register, without a hand-kept list that a new file would have to edit.
_INFRASTRUCTURE = {"base", "registry", "checks", "protocol"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _INFRASTRUCTURE and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

from .protocol import EvaluationReport, evaluate  # noqa: E402  (needs the registry filled)

__all__ = [
    "EVALUATORS", "BatchOutcome", "EvalOutcome", "EvaluationReport", "Evaluator", "evaluate", "get_evaluator",
    "list_evaluators", "register_evaluator",
]
