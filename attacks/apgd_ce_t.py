"""AutoAttack's first two attacks alone: APGD-CE then APGD-T, at the standard
settings of attacks/autoattack.py (100 iterations, 1 restart, 9 target
classes, rho 0.75), without FAB-T and Square.

Where standard AutoAttack costs too much (the CPU quickstart), this part of
it still catches what PGD alone misses: APGD's step-size schedule and the
targeted DLR loss break examples that a fixed-step cross-entropy PGD cannot,
and the masking check (attacks/checks.py, ``masking_flags``) compares it with
PGD. It is its own evaluator type with its own result name, ``apgd_ce_t``,
so no table, record or export can take it for standard AutoAttack (the
export's ``autoattack_acc`` reads evaluations of type ``autoattack`` only).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from .autoattack import DEFAULTS, AutoAttack
from .registry import register_evaluator


@register_evaluator("apgd_ce_t")
class APGDCEAndT(AutoAttack):
    """Options: ``eps`` (8/255), ``norm`` ("Linf" | "L2"), ``n_classes`` (default: the model's
    number of outputs). Name ``apgd_ce_t``, plus non-default options (``apgd_ce_t_eps16``)."""

    def __init__(self, *, eps=DEFAULTS["eps"], norm=DEFAULTS["norm"], n_classes: Optional[int] = None,
                 name: Optional[str] = None):
        # the components of AutoAttack's cheaper version, under a name of its own
        super().__init__(eps=eps, norm=norm, version="fast", n_classes=n_classes, name=name)

    def base_name(self):
        return "apgd_ce_t"

    def settings(self) -> Dict[str, Any]:
        out = super().settings()
        # no AutoAttack `version` here: nothing downstream may read this as a version of AutoAttack
        out.pop("version", None)
        out["part_of"] = "AutoAttack standard (its first two attacks only; not AutoAttack)"
        return out
