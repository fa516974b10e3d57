"""Random-noise probe (the black-box baseline of the white-box-beats-black-box
check, docs/evaluators.md): each pixel moves by +eps or -eps with equal
probability, clamped to [0, 1]. An example counts as broken if any of
``samples`` draws is misclassified. Noise that breaks examples PGD does not
is a sign of gradient masking."""
from __future__ import annotations

from typing import Optional

import torch

from ._perturb import PerturbationEvaluator
from .base import as_float, as_int, fraction_text
from .registry import register_evaluator

DEFAULTS = {"eps": 8 / 255, "samples": 1}


@register_evaluator("noise")
class Noise(PerturbationEvaluator):
    """Options: ``eps`` (8/255), ``samples`` (1). Name ``noise`` plus non-default options."""

    kind = "blackbox"

    def __init__(self, *, eps=DEFAULTS["eps"], samples=DEFAULTS["samples"], name: Optional[str] = None):
        super().__init__(name=name)
        self.eps = as_float(eps, "noise: eps")
        if self.eps <= 0:
            raise ValueError(f"noise: eps must be > 0, got {self.eps}")
        self.restarts = as_int(samples, "noise: samples")

    def base_name(self):
        return "noise"

    def name_options(self):
        return [("eps", self.eps, DEFAULTS["eps"], "pixel"), ("samples", self.restarts, DEFAULTS["samples"], "")]

    def settings(self):
        return {"eps": self.eps, "eps_text": fraction_text(self.eps), "norm": "Linf",
                "samples": self.restarts, "distribution": "uniform random sign"}

    def perturb(self, model, x, y):
        sign = torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1
        return (x + self.eps * sign).clamp(0, 1)
