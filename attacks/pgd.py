"""PGD-k (Madry et al. 2018) through torchattacks: a uniform random start in the
eps-ball, k signed-gradient steps of size ``step`` on the cross-entropy, each
projected onto the eps-ball and clamped to [0, 1]. With ``restarts`` > 1 the
examples that survived are attacked again from a new random start; an example
counts as broken if any restart breaks it.

``norm: L2`` runs torchattacks' PGDL2 instead: a random start in the L2
ball, steps of L2 length ``step`` along the normalized gradient, projected
onto the L2 ball of radius ``eps`` and clamped to [0, 1]."""
from __future__ import annotations

from typing import Optional

import torchattacks

from ._perturb import PerturbationEvaluator, torchattacks_version
from .base import as_bool, as_choice, as_float, as_int, fraction_text
from .registry import register_evaluator

DEFAULTS = {"eps": 8 / 255, "step": 2 / 255, "steps": 10, "random_start": True, "restarts": 1, "norm": "Linf"}


@register_evaluator("pgd")
class PGD(PerturbationEvaluator):
    """Options: ``eps`` (8/255), ``step`` (2/255), ``steps`` (10), ``random_start`` (true),
    ``restarts`` (1), ``norm`` ("Linf" | "L2": the ball of ``eps``; ``step`` is then an L2 length).
    Name ``pgd<steps>`` plus non-default options (``pgd10_eps16``, ``pgd10_eps72_step18_normL2``)."""

    kind = "whitebox"
    record_loss = True

    def __init__(self, *, eps=DEFAULTS["eps"], step=DEFAULTS["step"], steps=DEFAULTS["steps"],
                 random_start=DEFAULTS["random_start"], restarts=DEFAULTS["restarts"],
                 norm=DEFAULTS["norm"], name: Optional[str] = None):
        super().__init__(name=name)
        self.eps = as_float(eps, "pgd: eps")
        self.step = as_float(step, "pgd: step")
        self.steps = as_int(steps, "pgd: steps")
        self.random_start = as_bool(random_start, "pgd: random_start")
        self.restarts = as_int(restarts, "pgd: restarts")
        self.norm = as_choice(norm, "pgd: norm", ("Linf", "L2"))
        if self.eps <= 0 or self.step <= 0:
            raise ValueError(f"pgd: eps and step must be > 0, got eps={self.eps}, step={self.step}")

    def base_name(self):
        return f"pgd{self.steps}"

    def name_options(self):
        return [("eps", self.eps, DEFAULTS["eps"], "pixel"), ("step", self.step, DEFAULTS["step"], "pixel"),
                ("random_start", self.random_start, DEFAULTS["random_start"], ""),
                ("restarts", self.restarts, DEFAULTS["restarts"], ""), ("norm", self.norm, DEFAULTS["norm"], "")]

    def settings(self):
        return {"eps": self.eps, "eps_text": fraction_text(self.eps), "norm": self.norm, "steps": self.steps,
                "step": self.step, "step_text": fraction_text(self.step), "random_start": self.random_start,
                "restarts": self.restarts,
                "library": f"torchattacks {torchattacks_version()} {'PGDL2' if self.norm == 'L2' else 'PGD'}"}

    def perturb(self, model, x, y):
        if self.norm == "L2":
            attack = torchattacks.PGDL2(model, eps=self.eps, alpha=self.step, steps=self.steps,
                                        random_start=self.random_start)
            attack.set_device(x.device)
            return attack(x, y)
        attack = torchattacks.PGD(model, eps=self.eps, alpha=self.step, steps=self.steps,
                                  random_start=self.random_start)
        attack.set_device(x.device)
        return attack(x, y)
