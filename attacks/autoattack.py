"""AutoAttack (Croce & Hein 2020) built from torchattacks' components with the
settings of the authors' ``version='standard'`` (the RobustBench setting):

* APGD-CE: 100 iterations, 1 restart (rho 0.75, no EOT);
* APGD-T: 100 iterations, 1 restart, 9 target classes;
* FAB-T: 100 iterations, 1 restart, 9 target classes;
* Square: 5000 queries, 1 restart, p_init 0.8, no rescaled schedule;

each run on the examples that the previous ones left correctly classified.
With fewer than 10 classes the targeted attacks take every other class.
torchattacks' own ``AutoAttack`` class leaves APGD, APGD-T and FAB at its
defaults of 10 iterations, which is why it is not used directly.

``version: fast`` is a cheaper variant under its own result name
(``autoattack_fast``): APGD-CE and APGD-T at the standard settings, without
FAB-T and Square (which mostly guard against gradient masking, and cost the
most). Every setting is recorded with the result.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torchattacks

from . import _progress
from ._perturb import PerturbationEvaluator, torchattacks_version
from .base import as_choice, as_float, as_int, fraction_text
from .registry import register_evaluator

DEFAULTS = {"eps": 8 / 255, "norm": "Linf", "version": "standard"}

#: the authors' standard settings (shared by every version here)
ITERATIONS = 100
TARGETS = 9
SQUARE_QUERIES = 5000
SQUARE_P_INIT = 0.8
APGD_RHO = 0.75
RESTARTS = {"apgd-ce": 1, "apgd-t": 1, "fab-t": 1, "square": 1}
COMPONENTS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "fast": ("apgd-ce", "apgd-t"),
}


@register_evaluator("autoattack")
class AutoAttack(PerturbationEvaluator):
    """Options: ``eps`` (8/255), ``norm`` ("Linf" | "L2"), ``version`` ("standard" | "fast"),
    ``n_classes`` (default: the model's number of outputs). Name ``autoattack`` (standard) or
    ``autoattack_fast``, plus non-default options (``autoattack_eps16``)."""

    kind = "whitebox"

    def __init__(self, *, eps=DEFAULTS["eps"], norm=DEFAULTS["norm"], version=DEFAULTS["version"],
                 n_classes: Optional[int] = None, name: Optional[str] = None):
        super().__init__(name=name)
        self.eps = as_float(eps, "autoattack: eps")
        if self.eps <= 0:
            raise ValueError(f"autoattack: eps must be > 0, got {self.eps}")
        self.norm = as_choice(norm, "autoattack: norm", ("Linf", "L2"))
        self.version = as_choice(version, "autoattack: version (the cheaper variant is 'fast')", tuple(COMPONENTS))
        self.n_classes = None if n_classes is None else as_int(n_classes, "autoattack: n_classes", 2)
        self._classes = self.n_classes

    def base_name(self):
        return "autoattack" if self.version == "standard" else f"autoattack_{self.version}"

    def name_options(self):
        return [("eps", self.eps, DEFAULTS["eps"], "pixel" if self.norm == "Linf" else ""),
                ("norm", self.norm, DEFAULTS["norm"], "")]

    @property
    def components(self) -> List[str]:
        return list(COMPONENTS[self.version])

    def targets(self) -> Optional[int]:
        """Target classes of APGD-T and FAB-T: the standard 9, or every other class."""
        return None if self._classes is None else min(TARGETS, self._classes - 1)

    def settings(self) -> Dict[str, Any]:
        parts = self.components
        return {"eps": self.eps, "eps_text": fraction_text(self.eps), "norm": self.norm, "version": self.version,
                "components": parts, "iterations": ITERATIONS,
                "restarts": {c: RESTARTS[c] for c in parts},
                "targets": self.targets() if any(c.endswith("-t") for c in parts) else None,
                "queries": SQUARE_QUERIES if "square" in parts else None,
                "square_p_init": SQUARE_P_INIT if "square" in parts else None,
                "apgd_rho": APGD_RHO, "n_classes": self._classes,
                "library": f"torchattacks {torchattacks_version()} (APGD, APGDT, FAB, Square, MultiAttack)"}

    def prepare(self, model, x, y):
        if self.n_classes is None and len(x):
            with torch.no_grad():
                self._classes = int(model(x[:1]).shape[1])
        # APGD-T's DLR loss reads the 4th largest logit
        if self._classes is not None and self._classes < 4:
            raise ValueError(f"autoattack needs at least 4 classes (APGD-T's DLR loss reads the 4th largest "
                             f"logit); the model has {self._classes}")

    def build(self, model, seed: int):
        """The torchattacks attacks, in order, with the settings above."""
        common = dict(eps=self.eps, norm=self.norm, seed=seed, verbose=False)
        n_classes, targets = self._classes, self.targets()
        made = []
        for part in self.components:
            if part == "apgd-ce":
                attack = torchattacks.APGD(model, steps=ITERATIONS, n_restarts=RESTARTS[part], loss="ce",
                                           eot_iter=1, rho=APGD_RHO, **common)
            elif part == "apgd-t":
                attack = torchattacks.APGDT(model, steps=ITERATIONS, n_restarts=RESTARTS[part], eot_iter=1,
                                            rho=APGD_RHO, n_classes=n_classes, **common)
                attack.n_target_classes = targets    # torchattacks sets n_classes - 1
            elif part == "fab-t":
                attack = torchattacks.FAB(model, steps=ITERATIONS, n_restarts=RESTARTS[part], multi_targeted=True,
                                          n_classes=n_classes, **common)
                attack.n_target_classes = targets
            else:
                attack = torchattacks.Square(model, n_queries=SQUARE_QUERIES, n_restarts=RESTARTS[part],
                                             p_init=SQUARE_P_INIT, loss="margin", resc_schedule=False, **common)
            made.append(attack)
        return made

    def perturb(self, model, x, y):
        # every component seeds torch's global RNG itself (as the authors' code
        # does, one seed for all); draw it from the global RNG, which the batch
        # runs with seeded from its own generator
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item())
        attack = torchattacks.MultiAttack(self.build(model, seed))
        attack.set_device(x.device)
        with _progress.counting_forwards(model, self.forward_budget()):
            return attack(x, y)

    def forward_budget(self) -> int:
        """Roughly the most forward passes the components make on a batch (the
        progress lines' estimate): their iterations or queries, per target."""
        targets = self.targets() or TARGETS
        per_part = {"apgd-ce": ITERATIONS, "apgd-t": ITERATIONS * targets, "fab-t": 2 * ITERATIONS * targets,
                    "square": SQUARE_QUERIES}
        return sum(per_part.get(part, ITERATIONS) * RESTARTS.get(part, 1) for part in self.components)
