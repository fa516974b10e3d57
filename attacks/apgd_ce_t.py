"""AutoAttack's first two attacks alone: APGD-CE then APGD-T (the second on
the examples the first left correct), by default at the standard settings of
attacks/autoattack.py (100 iterations, 1 restart, 9 target classes, rho
0.75), without FAB-T and Square.

Where standard AutoAttack costs too much (the CPU configs), this part of it
still catches what PGD alone misses: APGD's step-size schedule and the
targeted DLR loss (free of the logits' scale) break examples that a
fixed-step cross-entropy PGD cannot, and the masking check (attacks/checks.py,
``masking_flags``) compares it with PGD. It is its own evaluator type with
its own result name, ``apgd_ce_t``, so no table, record or export can take it
for standard AutoAttack (the export's ``autoattack_acc`` reads evaluations of
type ``autoattack`` only). Fewer ``iterations`` or ``targets`` than the
standard ones enter the name (``apgd_ce_t_iterations20_targets3``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torchattacks

from .autoattack import APGD_RHO, DEFAULTS, ITERATIONS, RESTARTS, TARGETS, AutoAttack
from .base import as_int
from .registry import register_evaluator


@register_evaluator("apgd_ce_t")
class APGDCEAndT(AutoAttack):
    """Options: ``eps`` (8/255), ``norm`` ("Linf" | "L2"), ``iterations`` (100, each attack),
    ``targets`` (9, APGD-T's target classes), ``n_classes`` (default: the model's number of
    outputs). Name ``apgd_ce_t``, plus non-default options (``apgd_ce_t_eps16``)."""

    def __init__(self, *, eps=DEFAULTS["eps"], norm=DEFAULTS["norm"], iterations=ITERATIONS, targets=TARGETS,
                 n_classes: Optional[int] = None, name: Optional[str] = None):
        # the components of AutoAttack's cheaper version, under a name of its own
        super().__init__(eps=eps, norm=norm, version="fast", n_classes=n_classes, name=name)
        self.iterations = as_int(iterations, "apgd_ce_t: iterations", 1)
        self.n_targets = as_int(targets, "apgd_ce_t: targets", 1)

    def base_name(self):
        return "apgd_ce_t"

    def name_options(self):
        return super().name_options() + [("iterations", self.iterations, ITERATIONS, ""),
                                         ("targets", self.n_targets, TARGETS, "")]

    def targets(self) -> Optional[int]:
        return None if self._classes is None else min(self.n_targets, self._classes - 1)

    def settings(self) -> Dict[str, Any]:
        out = super().settings()
        # no AutoAttack `version` here: nothing downstream may read this as a version of AutoAttack
        out.pop("version", None)
        out["iterations"] = self.iterations
        out["part_of"] = "AutoAttack standard (its first two attacks only; not AutoAttack)"
        standard = self.iterations == ITERATIONS and self.n_targets == TARGETS
        out["settings_of"] = "AutoAttack standard" if standard else "fewer iterations or targets than AutoAttack"
        return out

    def build(self, model, seed: int) -> List:
        common = dict(eps=self.eps, norm=self.norm, seed=seed, verbose=False)
        ce = torchattacks.APGD(model, steps=self.iterations, n_restarts=RESTARTS["apgd-ce"], loss="ce",
                               eot_iter=1, rho=APGD_RHO, **common)
        t = torchattacks.APGDT(model, steps=self.iterations, n_restarts=RESTARTS["apgd-t"], eot_iter=1,
                               rho=APGD_RHO, n_classes=self._classes, **common)
        t.n_target_classes = self.targets()      # torchattacks sets n_classes - 1
        return [ce, t]
