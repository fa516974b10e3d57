"""FGSM (Goodfellow et al. 2015) through torchattacks: one signed-gradient step
of size eps on the cross-entropy, no random start, clamp to [0, 1]."""
from __future__ import annotations

from typing import Optional

import torchattacks

from ._perturb import PerturbationEvaluator, torchattacks_version
from .base import as_float, fraction_text
from .registry import register_evaluator

DEFAULT_EPS = 8 / 255


@register_evaluator("fgsm")
class FGSM(PerturbationEvaluator):
    """Options: ``eps`` (L_inf radius, default 8/255). Name ``fgsm`` (``fgsm_eps16`` ...)."""

    kind = "whitebox"
    record_loss = True

    def __init__(self, *, eps=DEFAULT_EPS, name: Optional[str] = None):
        super().__init__(name=name)
        self.eps = as_float(eps, "fgsm: eps")
        if self.eps <= 0:
            raise ValueError(f"fgsm: eps must be > 0, got {self.eps}")

    def base_name(self):
        return "fgsm"

    def name_options(self):
        return [("eps", self.eps, DEFAULT_EPS, "pixel")]

    def settings(self):
        return {"eps": self.eps, "eps_text": fraction_text(self.eps), "norm": "Linf", "steps": 1,
                "step": self.eps, "random_start": False, "restarts": 1,
                "library": f"torchattacks {torchattacks_version()} FGSM"}

    def perturb(self, model, x, y):
        attack = torchattacks.FGSM(model, eps=self.eps)
        attack.set_device(x.device)
        return attack(x, y)
