"""The ``eval`` settings of the protocol: defaults, checks with one clear
message per bad value, and the evaluators built from their specs."""
from __future__ import annotations

import zlib
from typing import Any, Dict, List, Optional, Tuple

from robustbench_convnorm.registry import RegistryError, closest

from . import checks
from .base import Evaluator, as_bool, as_choice, as_float, as_int
from .registry import get_evaluator

DEFAULT_CONFIG: Dict[str, Any] = {
    "n_examples": None,
    "batch_size": 256,
    "seed": 0,
    "checks": True,
    "alpha": checks.ALPHA,
    "threat_model": None,
    "evaluators": [{"type": "clean"}],
}


def resolve_config(eval_cfg: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Defaults filled in and values checked; unknown keys stop with one message."""
    cfg = dict(DEFAULT_CONFIG)
    for key, value in dict(eval_cfg or {}).items():
        if key not in DEFAULT_CONFIG:
            raise RegistryError(f"eval config has no key '{key}'{closest(key, DEFAULT_CONFIG)}; "
                                f"allowed: {', '.join(DEFAULT_CONFIG)}")
        cfg[key] = value
    if cfg["n_examples"] is not None:
        cfg["n_examples"] = as_int(cfg["n_examples"], "eval.n_examples")
    cfg["batch_size"] = as_int(cfg["batch_size"], "eval.batch_size")
    cfg["seed"] = as_int(cfg["seed"], "eval.seed", minimum=0)
    cfg["checks"] = as_bool(cfg["checks"], "eval.checks")
    cfg["alpha"] = as_float(cfg["alpha"], "eval.alpha")
    if not 0 < cfg["alpha"] < 1:
        raise ValueError(f"eval.alpha is a significance level between 0 and 1 (e.g. 0.01), got {cfg['alpha']}")
    cfg["threat_model"] = _threat_model(cfg["threat_model"])
    if not isinstance(cfg["evaluators"], (list, tuple)):
        raise ValueError(f"eval.evaluators must be a list of {{type: ..., options}}, got {cfg['evaluators']!r}")
    return cfg


def _threat_model(value) -> Optional[Tuple[str, float]]:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"eps", "norm"} or "eps" not in value:
        raise ValueError(f"eval.threat_model must be null or {{eps: 8/255, norm: Linf}}, got {value!r}")
    eps = as_float(value["eps"], "eval.threat_model.eps")
    if eps <= 0:
        raise ValueError(f"eval.threat_model.eps must be > 0, got {eps}")
    return as_choice(value.get("norm", "Linf"), "eval.threat_model.norm", ("Linf", "L2")), eps


def build_evaluators(specs) -> List[Evaluator]:
    evaluators: List[Evaluator] = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            spec = {"type": spec}
        if not isinstance(spec, dict) or "type" not in spec:
            raise ValueError(f"eval.evaluators[{i}] must be a mapping with a 'type', got {spec!r}")
        options = dict(spec)
        evaluators.append(get_evaluator(options.pop("type"), **options))
    if not any(ev.kind == "clean" for ev in evaluators):
        evaluators.insert(0, get_evaluator("clean"))
    seen: Dict[str, Evaluator] = {}
    for ev in evaluators:
        if ev.name in seen:
            raise ValueError(f"two evaluators share the result name '{ev.name}' ({seen[ev.name]!r} and {ev!r}); "
                             "give one of them a 'name'")
        seen[ev.name] = ev
    return evaluators


def evaluator_seed(seed: int, name: str) -> int:
    return (int(seed) * 0x9E3779B1 + zlib.crc32(name.encode())) % (2 ** 63)
