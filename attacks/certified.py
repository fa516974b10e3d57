"""Certified accuracy: examples whose prediction provably cannot change
within an L2 (or L-infinity) ball, from the network's sound Lipschitz bound
(``robustbench_convnorm.lipschitz.network``).

Per example: the logit margin m = z_y - max_{j != y} z_j and the certified
L2 radius ``m / (sqrt(2) L)`` (L bounds the logits, L2 to L2), or the larger
``min_j (z_y - z_j) / (||w_y - w_j|| L_f)`` where the last layer is linear on
features bounded by L_f. An example is certified (``correct``) when its
radius exceeds the evaluator's eps: an L2 radius with ``norm: L2``; with
``norm: Linf`` the L2 radius ``sqrt(d) * eps`` of the L-infinity ball's
corners (||delta||_2 <= sqrt(d) ||delta||_inf, d = C*H*W).

No attack runs, so this is a lower bound of every robust accuracy at the same
radius, never an estimate: when a module has no sound bound the network has
no certificate, every example counts as not certified and the record says
which module (``bound_warnings``). Kind ``certified``: it takes no part in
the empirical worst case; ``attacks._certified_checks`` checks it against the
attacks' own perturbations instead (flag ``<name>:broken``).
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from robustbench_convnorm.lipschitz.network import certified_radii, network_bound

from .base import BatchOutcome, EvalOutcome, Evaluator, as_choice, as_float, fraction_text, percent
from .registry import register_evaluator

#: the radii of the 1-Lipschitz literature (Prach et al., CVPR 2024, and others), in L2
DEFAULT_RADII = (36 / 255, 72 / 255, 108 / 255, 1.0)
DEFAULTS = {"eps": 36 / 255, "norm": "L2"}

# one bound per model state and input shape: several certified evaluators share it
_BOUNDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _state_key(model: torch.nn.Module, shape) -> tuple:
    tensors = list(model.parameters()) + list(model.buffers())
    return tuple(shape) + tuple((t.data_ptr(), t._version) for t in tensors)


def cached_network_bound(model: torch.nn.Module, shape):
    """``network_bound(model, shape)``, computed once per model state."""
    key = _state_key(model, shape)
    hit = _BOUNDS.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    bound = network_bound(model, shape)
    _BOUNDS[model] = (key, bound)
    return bound


@register_evaluator("certified")
class Certified(Evaluator):
    """Options: ``eps`` (36/255: the radius whose certified accuracy is the
    result), ``norm`` ("L2" | "Linf": the ball of ``eps``), ``radii`` (the L2
    radii of the recorded curve; default 36/255, 72/255, 108/255, 1). Name
    ``certified`` plus non-default options (``certified_eps72``,
    ``certified_eps26_normLinf``)."""

    kind = "certified"

    def __init__(self, *, eps=DEFAULTS["eps"], norm=DEFAULTS["norm"], radii: Optional[Sequence] = None,
                 name: Optional[str] = None):
        super().__init__(name=name)
        self.eps = as_float(eps, "certified: eps")
        if self.eps < 0:
            raise ValueError(f"certified: eps must be >= 0, got {self.eps}")
        self.norm = as_choice(norm, "certified: norm", ("L2", "Linf"))
        given = DEFAULT_RADII if radii is None else radii
        if isinstance(given, (str, int, float)):
            given = [given]
        self.radii = sorted(as_float(r, "certified: radii") for r in given)
        if any(r < 0 for r in self.radii):
            raise ValueError(f"certified: radii must be >= 0, got {self.radii}")
        self._bound = None
        self._dims: Optional[int] = None

    def base_name(self):
        return "certified"

    def name_options(self):
        return [("eps", self.eps, DEFAULTS["eps"], "pixel"), ("norm", self.norm, DEFAULTS["norm"], "")]

    def l2_radius(self) -> Optional[float]:
        """The L2 radius an example must exceed (None before the input size is known for Linf)."""
        if self.norm == "L2":
            return self.eps
        return None if self._dims is None else self.eps * math.sqrt(self._dims)

    def settings(self) -> Dict[str, Any]:
        return {"eps": self.eps, "eps_text": fraction_text(self.eps), "norm": self.norm,
                "l2_radius": self.l2_radius(), "radii": list(self.radii),
                "radius_rule": "margin / (sqrt(2) L), or min_j (z_y - z_j) / (||w_y - w_j|| L_features)",
                "bound": "lipschitz.network (sound: docs/lipschitz.md)"}

    def prepare(self, model, x, y):
        self._dims = int(np.prod(x.shape[1:])) if x.dim() > 1 else 1
        self._bound = cached_network_bound(model, tuple(int(s) for s in x.shape[1:]))

    def empty_columns(self):
        return {"correct": np.zeros(0, bool), "radius": np.zeros(0), "margin": np.zeros(0)}

    def attack_batch(self, model, x, y, *, generator, example_seeds) -> BatchOutcome:
        if self._bound is None:
            self.prepare(model, x, y)
        b = self._bound
        with torch.no_grad():
            logits = model(x)
        if b.value is None:
            radius = torch.zeros(len(x), dtype=torch.float64)
            margin = certified_radii(logits, y, 1.0)[1]
        else:
            radius, margin = certified_radii(logits, y, b.value, features=b.features, final_weight=b.final_weight)
        need = self.l2_radius()
        correct = radius > need
        return BatchOutcome(per_example={"correct": correct.cpu().numpy(), "radius": radius.cpu().numpy(),
                                         "margin": margin.cpu().numpy()})

    def finish(self, per_example, totals) -> EvalOutcome:
        radius = np.asarray(per_example["radius"], dtype=np.float64)
        b = self._bound
        info: Dict[str, Any] = dict(self.describe())
        summary = b.summary() if b is not None else {"bound": None, "warnings": ["never prepared"]}
        info.update({"network_bound": summary["bound"], "network_bound_log10": summary.get("bound_log10"),
                     "bound_sound": summary["bound"] is not None,
                     "features_bound": summary.get("features_bound"),
                     "final_layer_margins": summary.get("final_layer_margins"),
                     "bound_warnings": summary["warnings"], "bound_parts": summary.get("parts", []),
                     "bound_seconds": summary.get("seconds")})
        info["curve"] = [[float(r), percent(radius > r)] for r in self.radii]
        ok = radius[radius > 0]
        metrics = {"acc": percent(np.asarray(per_example["correct"], dtype=bool)), "n": int(len(radius)),
                   "median_radius": float(np.median(radius)) if len(radius) else None,
                   "mean_radius_certified": float(ok.mean()) if len(ok) else 0.0}
        return EvalOutcome(per_example=per_example, metrics=metrics, info=info)
