"""The rules that bound one piece of a network, keyed by what the piece is.

Two registries, like the evaluator registry:

* module rules, keyed by module type: ``@register_module_rule(nn.BatchNorm2d)``
  on ``rule(module, input_shape) -> float``, a sound L2 Lipschitz bound of the
  module in eval mode for inputs of ``input_shape`` (one example, no batch);
* function rules, keyed by the function or tensor method a traced forward
  calls: ``@register_function_rule(F.relu, "relu")`` on
  ``rule(args, kwargs) -> float``, the bound of the call's OUTPUT with respect
  to the network input, from its arguments (``Arg`` where an argument is a
  traced value: its own bound ``lip`` and ``shape``; plain values otherwise).

A rule that cannot bound what it was given raises ``Unbounded`` with the
reason; the network then has no certificate (never a guess).

The generic rule comes first: any module with a method ``lipschitz_bound(self)
-> float`` (a sound bound of the module as a whole) is bounded by it and its
children are not visited. A rule registered for a type covers a subclass only
when the subclass keeps the type's ``forward`` (a subclass with its own forward
may compute anything), unless the rule checks the operator itself
(``checks_operator=True``: the conv rule compares the layer with its weight's
convolution first).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["Arg", "FUNCTION_RULES", "MODULE_RULES", "Unbounded", "find_module_rule", "function_rule_key",
           "module_bound", "register_function_rule", "register_module_rule"]

ModuleRule = Callable[[nn.Module, Tuple[int, ...]], float]
FunctionRule = Callable[[Sequence[Any], Dict[str, Any]], float]


class Unbounded(Exception):
    """A rule cannot give a sound bound here; the message says why."""


@dataclass
class Arg:
    """A traced value among a call's arguments: its bound with respect to the
    network input (0 for a constant) and its shape without the batch."""
    lip: float
    shape: Optional[Tuple[int, ...]] = None


@dataclass
class _ModuleEntry:
    rule: ModuleRule
    checks_operator: bool


MODULE_RULES: Dict[type, _ModuleEntry] = {}
FUNCTION_RULES: Dict[Any, FunctionRule] = {}


def register_module_rule(*types: type, checks_operator: bool = False):
    """Decorator: ``rule(module, input_shape) -> float`` bounds modules of ``types``."""
    def wrap(rule: ModuleRule) -> ModuleRule:
        for t in types:
            MODULE_RULES[t] = _ModuleEntry(rule, checks_operator)
        return rule
    return wrap


def function_rule_key(target: Union[Callable, str]) -> Any:
    """Functions are keyed by themselves, tensor methods by their name."""
    return ("method", target) if isinstance(target, str) else target


def register_function_rule(*targets: Union[Callable, str]):
    """Decorator: ``rule(args, kwargs) -> float`` bounds calls of ``targets``
    (functions such as ``F.relu``, or tensor method names such as ``"flatten"``)."""
    def wrap(rule: FunctionRule) -> FunctionRule:
        for t in targets:
            FUNCTION_RULES[function_rule_key(t)] = rule
        return rule
    return wrap


def has_own_bound(module: nn.Module) -> bool:
    return callable(getattr(module, "lipschitz_bound", None))


def find_module_rule(module: nn.Module) -> Optional[ModuleRule]:
    """The rule for ``module``'s type (exact, else the nearest registered base
    whose forward it keeps or whose rule checks the operator), or None."""
    cls = type(module)
    entry = MODULE_RULES.get(cls)
    if entry is not None:
        return entry.rule
    for base in cls.__mro__[1:]:
        entry = MODULE_RULES.get(base)
        if entry is None:
            continue
        if entry.checks_operator or getattr(cls, "forward", None) is getattr(base, "forward", None):
            return entry.rule
        return None
    return None


def module_bound(module: nn.Module, input_shape: Sequence[int]) -> Tuple[float, str]:
    """(bound, how) of one module: its own ``lipschitz_bound()`` first, then
    its registered rule. Raises Unbounded when neither gives a finite bound."""
    shape = tuple(int(s) for s in input_shape)
    if has_own_bound(module):
        value, how = module.lipschitz_bound(), "lipschitz_bound()"
    else:
        rule = find_module_rule(module)
        if rule is None:
            raise Unbounded(f"no Lipschitz rule for {type(module).__name__} (register one with "
                            f"lipschitz.network.register_module_rule, or give the module a lipschitz_bound() method)")
        value, how = rule(module, shape), getattr(rule, "__name__", "rule")
    if isinstance(value, torch.Tensor):
        value = float(value.detach())
    if value is None or not math.isfinite(float(value)) or float(value) < 0:
        raise Unbounded(f"{type(module).__name__}: {how} gave {value!r}, not a finite bound >= 0")
    return float(value), how
