"""Rules for the functions and tensor methods a traced forward calls.

Each rule returns the bound of the call's output with respect to the network
input, from the bounds of its traced arguments (``Arg.lip``); plain numbers
and constant tensors are constants (bound 0).
"""
from __future__ import annotations

import math
import operator
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .layer_rules import _GELU_SLOPE, _SILU_SLOPE, adaptive_avg_bound, adaptive_max_bound, avg_pool_bound, \
    max_pool_bound
from .registry import Arg, Unbounded, register_function_rule


def _traced(args: Sequence[Any]):
    return [a for a in args if isinstance(a, Arg)]


def _first(args) -> Arg:
    a = args[0] if args else None
    if not isinstance(a, Arg):
        raise Unbounded("the first argument is not a traced tensor")
    return a


def _only_first_traced(args, kwargs) -> Arg:
    a = _first(args)
    if any(isinstance(v, Arg) and v.lip > 0 for v in list(args[1:]) + list(kwargs.values())):
        raise Unbounded("several arguments depend on the input")
    return a


@register_function_rule(F.relu, torch.relu, F.relu6, torch.tanh, F.tanh, F.hardtanh, torch.flatten, F.dropout,
                        F.dropout2d, "relu", "tanh", "flatten", "view", "reshape", "contiguous", "clone", "detach",
                        "squeeze", "unsqueeze", "permute", "transpose", "float", "double", "to", torch.reshape,
                        torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose)
def one_lipschitz_call(args, kwargs) -> float:
    """1-Lipschitz elementwise maps and reshapes (dropout: eval mode)."""
    return _only_first_traced(args, kwargs).lip


@register_function_rule(torch.sigmoid, F.sigmoid, "sigmoid")
def sigmoid_call(args, kwargs) -> float:
    return 0.25 * _only_first_traced(args, kwargs).lip


@register_function_rule(F.gelu)
def gelu_call(args, kwargs) -> float:
    return _GELU_SLOPE * _only_first_traced(args, kwargs).lip


@register_function_rule(F.silu)
def silu_call(args, kwargs) -> float:
    return _SILU_SLOPE * _only_first_traced(args, kwargs).lip


@register_function_rule(F.leaky_relu)
def leaky_relu_call(args, kwargs) -> float:
    slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
    return max(1.0, abs(float(slope))) * _only_first_traced(args, kwargs).lip


@register_function_rule(operator.add, torch.add, "add", operator.sub, torch.sub, "sub")
def add_call(args, kwargs) -> float:
    """Lip(f + g) <= Lip(f) + Lip(g): a residual block is shortcut plus branch."""
    alpha = kwargs.get("alpha", 1)
    lips = [a.lip for a in _traced(args)]
    if len(lips) == 2:
        return lips[0] + abs(float(alpha)) * lips[1]
    return sum(lips)


def _scalar(v) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    raise Unbounded(f"a product or quotient with {type(v).__name__}, not a number")


@register_function_rule(operator.mul, torch.mul, "mul")
def mul_call(args, kwargs) -> float:
    traced = [a for a in args if isinstance(a, Arg) and a.lip > 0]
    if len(traced) != 1:
        raise Unbounded("a product of two values that depend on the input")
    other = next(a for a in args if a is not traced[0])
    return abs(_scalar(other)) * traced[0].lip


@register_function_rule(operator.truediv, torch.div, "div")
def div_call(args, kwargs) -> float:
    a = _first(args)
    if isinstance(args[1], Arg):
        raise Unbounded("a quotient by a traced value")
    d = _scalar(args[1])
    if d == 0:
        raise Unbounded("division by zero")
    return a.lip / abs(d)


@register_function_rule(operator.neg, torch.neg, "neg")
def neg_call(args, kwargs) -> float:
    return _first(args).lip


@register_function_rule(torch.cat, torch.concat)
def cat_call(args, kwargs) -> float:
    """||[f(x) - f(y); g(x) - g(y)]||^2 <= (L_f^2 + L_g^2) ||x - y||^2."""
    parts = args[0] if args else kwargs.get("tensors")
    return math.sqrt(sum(a.lip ** 2 for a in parts if isinstance(a, Arg)))


@register_function_rule(operator.getitem)
def getitem_call(args, kwargs) -> float:
    """Selecting entries by ints and slices drops coordinates: at most 1."""
    a, index = _first(args), args[1]
    items = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items):
        raise Unbounded("indexing by tensors or lists can repeat entries")
    return a.lip


@register_function_rule(F.adaptive_avg_pool2d)
def adaptive_avg_pool_call(args, kwargs) -> float:
    a = _first(args)
    size = args[1] if len(args) > 1 else kwargs["output_size"]
    return adaptive_avg_bound(a.shape, size) * a.lip


@register_function_rule(F.adaptive_max_pool2d)
def adaptive_max_pool_call(args, kwargs) -> float:
    a = _first(args)
    size = args[1] if len(args) > 1 else kwargs["output_size"]
    return adaptive_max_bound(a.shape, size) * a.lip


def _pool_args(args, kwargs, names):
    values = dict(zip(names, args[1:]))
    values.update({k: v for k, v in kwargs.items() if k in names})
    return values


@register_function_rule(F.max_pool2d)
def max_pool_call(args, kwargs) -> float:
    v = _pool_args(args, kwargs, ("kernel_size", "stride", "padding", "dilation"))
    return max_pool_bound(v["kernel_size"], v.get("stride") or v["kernel_size"], v.get("dilation", 1)) \
        * _first(args).lip


@register_function_rule(F.avg_pool2d)
def avg_pool_call(args, kwargs) -> float:
    v = _pool_args(args, kwargs, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                  "divisor_override"))
    return avg_pool_bound(v["kernel_size"], v.get("stride") or v["kernel_size"], v.get("padding", 0),
                          v.get("count_include_pad", True), v.get("divisor_override")) * _first(args).lip


@register_function_rule("size", "dim", "numel", getattr, torch.numel, len)
def shape_query(args, kwargs) -> float:
    """Shapes do not change with the input's values: constants (``x.view(x.size(0), -1)``)."""
    return 0.0
