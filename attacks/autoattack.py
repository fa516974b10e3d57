"""AutoAttack (Croce & Hein 2020) through torchattacks: the standard version runs
APGD-CE, APGD-T, FAB-T and Square in turn on the examples still unbroken."""
from __future__ import annotations

from typing import Optional

import torch
import torchattacks

from ._perturb import PerturbationEvaluator, torchattacks_version
from .base import as_choice, as_float, as_int, fraction_text
from .registry import register_evaluator

DEFAULTS = {"eps": 8 / 255, "norm": "Linf", "version": "standard"}


@register_evaluator("autoattack")
class AutoAttack(PerturbationEvaluator):
    """Options: ``eps`` (8/255), ``norm`` ("Linf" | "L2"), ``version`` ("standard" | "plus" |
    "rand"), ``n_classes`` (default: the model's number of outputs). Name ``autoattack`` plus
    non-default options (``autoattack_eps16``)."""

    kind = "whitebox"

    def __init__(self, *, eps=DEFAULTS["eps"], norm=DEFAULTS["norm"], version=DEFAULTS["version"],
                 n_classes: Optional[int] = None, name: Optional[str] = None):
        super().__init__(name=name)
        self.eps = as_float(eps, "autoattack: eps")
        if self.eps <= 0:
            raise ValueError(f"autoattack: eps must be > 0, got {self.eps}")
        self.norm = as_choice(norm, "autoattack: norm", ("Linf", "L2"))
        self.version = as_choice(version, "autoattack: version", ("standard", "plus", "rand"))
        self.n_classes = None if n_classes is None else as_int(n_classes, "autoattack: n_classes", 2)
        self._classes = self.n_classes
        self._seed = 0

    def base_name(self):
        return "autoattack"

    def name_options(self):
        return [("eps", self.eps, DEFAULTS["eps"], "pixel" if self.norm == "Linf" else ""),
                ("norm", self.norm, DEFAULTS["norm"], ""), ("version", self.version, DEFAULTS["version"], "")]

    def settings(self):
        return {"eps": self.eps, "eps_text": fraction_text(self.eps), "norm": self.norm,
                "version": self.version, "n_classes": self._classes, "restarts": 1,
                "library": f"torchattacks {torchattacks_version()} AutoAttack"}

    def prepare(self, model, x, y):
        if self.n_classes is None:
            with torch.no_grad():
                self._classes = int(model(x[:1]).shape[1])
        # the DLR losses read the 3rd (untargeted) or 4th (targeted) largest logit
        needed = 3 if self.version == "rand" else 4
        if self._classes < needed:
            raise ValueError(f"autoattack version '{self.version}' needs at least {needed} classes "
                             f"(its DLR loss reads the {needed}th largest logit); the model has {self._classes}")

    def perturb(self, model, x, y):
        # torchattacks seeds each sub-attack itself; take that seed from the
        # global RNG, which run() seeded from this evaluator's generator.
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item())
        attack = torchattacks.AutoAttack(model, norm=self.norm, eps=self.eps, version=self.version,
                                         n_classes=self._classes, seed=seed)
        attack.set_device(x.device)
        return attack(x, y)
