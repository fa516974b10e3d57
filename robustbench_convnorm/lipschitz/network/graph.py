"""A sound L2 Lipschitz bound of a whole network, composed along its traced graph.

The model is traced with ``torch.fx`` down to its leaves (modules with a rule
or a ``lipschitz_bound()`` method, and torch's own layers), shapes are
propagated on one input of zeros in eval mode, and every value of the graph
gets a bound with respect to the network input:

* the input: 1; a value that does not depend on the input: 0;
* a leaf module applied to a value of bound L: ``rule(module) * L``
  (composition: Lip(f o g) <= Lip(f) Lip(g));
* a function call: its function rule, from the bounds of its arguments (a
  sum a + b: L_a + L_b, which is how a residual block becomes
  Lip(shortcut) + Lip(branch));
* anything else: no bound, with a warning naming it.

When the output is a final ``nn.Linear`` applied to features of bound L_f,
the bound of the features and the linear layer's weight are kept as well:
the margin between classes i and j then moves by at most
``||w_i - w_j|| * L_f`` per unit of input (``margins.certified_radii``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.fx
from torch import nn

from .._util import EvalMode, device_dtype
from .registry import (FUNCTION_RULES, Arg, Unbounded, find_module_rule, function_rule_key, has_own_bound,
                       module_bound)

__all__ = ["NetworkBound", "network_bound", "unwrap_model"]


@dataclass
class NetworkBound:
    """The bound of a model's logits (L2 to L2) and how it was composed.

    value: the bound, or None when some piece has no sound bound (then
        ``warnings`` names it and nothing may be certified).
    features: the bound of the input of the final linear layer (None when
        the output is not a linear layer applied to the features).
    final_weight: that layer's weight (classes, features), float64.
    parts: one dict per leaf module: name, type, rule, bound, seconds.
    """
    value: Optional[float]
    features: Optional[float] = None
    final_weight: Optional[torch.Tensor] = None
    parts: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def log10(self) -> Optional[float]:
        return math.log10(self.value) if self.value and self.value > 0 else None

    def summary(self) -> Dict[str, Any]:
        """Plain JSON data for a record."""
        return {"bound": self.value, "bound_log10": self.log10, "features_bound": self.features,
                "final_layer_margins": self.final_weight is not None, "sound": self.value is not None,
                "parts": self.parts, "warnings": list(self.warnings), "seconds": round(self.seconds, 3)}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module itself under torch.compile (``_orig_mod``) or DDP (``module``)."""
    for _ in range(4):
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif type(model).__name__ == "DistributedDataParallel":
            model = model.module
        else:
            break
    return model


class _LeafTracer(torch.fx.Tracer):
    """Stops at modules that the rules bound as a whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if has_own_bound(m) or find_module_rule(m) is not None:
            return True
        return super().is_leaf_module(m, qualname)


def _shape(node: torch.fx.Node) -> Optional[tuple]:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape[1:]) if shape is not None else None


def _call_name(node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__qualname__", None) or getattr(node.target, "__name__", None) or str(node.target)


def network_bound(model: nn.Module, input_shape: Sequence[int]) -> NetworkBound:
    """A sound upper bound of the L2 Lipschitz constant of ``model`` (eval
    mode) on inputs of ``input_shape`` = (C, H, W), or None with warnings.

    Example::

        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> network_bound(net, (1, 2, 2)).value == float(torch.linalg.matrix_norm(net[1].weight, 2))
        True
    """
    t0 = time.perf_counter()
    model = unwrap_model(model)
    shape = tuple(int(s) for s in input_shape)
    result = NetworkBound(value=None)
    with EvalMode(model), torch.no_grad():
        if has_own_bound(model) or find_module_rule(model) is not None:
            try:
                value, how = module_bound(model, shape)
                result.value = value
                result.parts.append({"name": "", "type": type(model).__name__, "rule": how, "bound": value})
            except Exception as err:  # noqa: BLE001 - Unbounded, or a failing rule
                result.warnings.append(f"(model) {type(model).__name__}: {err}; no network bound, no certificate")
            result.seconds = time.perf_counter() - t0
            return result
        try:
            graph = _LeafTracer().trace(model)
            gm = torch.fx.GraphModule(model, graph)
        except Exception as err:  # noqa: BLE001 - any tracing failure means "cannot compose"
            result.warnings.append(f"(model) {type(model).__name__}: torch.fx could not trace its forward "
                                   f"({type(err).__name__}: {err}); no network bound, no certificate")
            result.seconds = time.perf_counter() - t0
            return result
        device, dtype = device_dtype(model)
        x0 = torch.zeros((1,) + shape, device=device, dtype=dtype)
        from torch.fx.passes.shape_prop import ShapeProp
        try:
            ShapeProp(gm).propagate(x0)
        except Exception as err:  # noqa: BLE001
            first = (str(err).splitlines() or [""])[0]
            result.warnings.append(f"(model) {type(model).__name__}: does not run on an input of shape "
                                   f"{list(x0.shape)} ({type(err).__name__}: {first}); no network bound")
            result.seconds = time.perf_counter() - t0
            return result
        _compose(gm, result)
    result.seconds = time.perf_counter() - t0
    return result


def _compose(gm: torch.fx.GraphModule, result: NetworkBound) -> None:
    lips: Dict[torch.fx.Node, Optional[float]] = {}
    modules = dict(gm.named_modules())
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]

    def arg_of(a):
        if isinstance(a, torch.fx.Node):
            return Arg(lips[a], _shape(a))
        if isinstance(a, (list, tuple)):
            return type(a)(arg_of(v) for v in a)
        if isinstance(a, dict):
            return {k: arg_of(v) for k, v in a.items()}
        return a

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            lips[node] = 1.0 if node is placeholders[0] else 0.0
            continue
        if node.op == "get_attr":
            lips[node] = 0.0
            continue
        ins = list(node.all_input_nodes)
        if any(lips[a] is None for a in ins):
            lips[node] = None
            continue
        if node.op == "output":
            lips[node] = lips[ins[0]] if ins else 0.0
            continue
        if all(lips[a] == 0.0 for a in ins):
            lips[node] = 0.0        # does not depend on the input: a constant
            continue
        try:
            if node.op == "call_module":
                module = modules[node.target]
                src = node.args[0] if node.args else None
                if not isinstance(src, torch.fx.Node) or any(a is not src for a in ins):
                    raise Unbounded("a module called with several traced inputs")
                t = time.perf_counter()
                value, how = module_bound(module, _shape(src) or ())
                result.parts.append({"name": node.target, "type": type(module).__name__, "rule": how,
                                     "bound": value, "seconds": round(time.perf_counter() - t, 4)})
                lips[node] = value * lips[src]
            else:
                rule = FUNCTION_RULES.get(function_rule_key(node.target))  # a method's target is its name
                if rule is None:
                    raise Unbounded(f"no Lipschitz rule for the call {_call_name(node)} (register one with "
                                    f"lipschitz.network.register_function_rule)")
                value = float(rule(arg_of(node.args), arg_of(node.kwargs)))
                if not math.isfinite(value) or value < 0:
                    raise Unbounded(f"{_call_name(node)}: rule gave {value!r}")
                lips[node] = value
        except Exception as err:  # noqa: BLE001 - Unbounded, or a rule that failed: no bound either way
            where = node.target if node.op == "call_module" else _call_name(node)
            why = str(err) if isinstance(err, Unbounded) else f"its rule failed ({type(err).__name__}: {err})"
            result.warnings.append(f"{where}: {why}; no network bound, no certificate")
            lips[node] = None
    out = next(n for n in gm.graph.nodes if n.op == "output")
    result.value = lips.get(out)
    # the final linear layer, for the margin bound of each pair of classes
    src = out.args[0] if out.args else None
    if result.value is not None and isinstance(src, torch.fx.Node) and src.op == "call_module":
        last = modules[src.target]
        feat = src.args[0] if src.args else None
        if type(last) is nn.Linear and isinstance(feat, torch.fx.Node) and lips.get(feat) is not None:
            result.features = lips[feat]
            result.final_weight = last.weight.detach().to(torch.float64).clone()

