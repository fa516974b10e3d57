"""Which modules of a model are conv layers, and the input each one sees.

The harness's builders tag their convs with ``conv_role``; a model built
elsewhere has none, so layers are also found by type: every torch conv
(``nn.Conv2d`` and its parametrized or subclassed forms, and the other
``nn.Conv*``) and every module presenting ``nn.Conv2d``'s interface
(``in_channels``, ``out_channels``, ``kernel_size``, ``stride`` and a 4-D
``weight``: ConvNorm2d, CayleyConv2d).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from ._util import EvalMode, device_dtype

__all__ = ["InputShapeError", "find_conv_layers", "is_conv2d_like", "layer_shapes", "trace_layers"]

_CONV_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride")


class InputShapeError(ValueError):
    """The model does not run on the input shape given."""


def is_conv2d_like(module: nn.Module) -> bool:
    """An ``nn.Conv2d`` (parametrized or subclassed) or a module with its
    interface and a 4-D ``weight`` (the harness's normalized convs)."""
    if isinstance(module, nn.Conv2d):
        return True
    if isinstance(module, nn.modules.conv._ConvNd) or not all(hasattr(module, a) for a in _CONV_ATTRS):
        return False
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 4


def find_conv_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every conv layer, in model order: tagged modules
    (``conv_role``), torch convs of any dimension and modules like
    ``nn.Conv2d`` (``is_conv2d_like``). Only the outermost: a conv inside a
    chosen one (ConvNorm's depthwise affine, a parametrization's
    submodules) is part of that layer.

    Example::

        >>> find_conv_layers(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)))
        [('0', Conv2d(3, 8, ...)), ('2', Conv2d(8, 8, ...))]
    """
    chosen: List[Tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(not outer or name.startswith(outer + ".") for outer, _ in chosen):
            continue
        if (getattr(module, "conv_role", None) is not None or isinstance(module, nn.modules.conv._ConvNd)
                or is_conv2d_like(module)):
            chosen.append((name, module))
    return chosen


def trace_layers(model: nn.Module, input_shape: Sequence[int], layers: List[Tuple[str, nn.Module]]
                 ) -> Tuple[Dict[str, Tuple[tuple, tuple]], Dict[str, int]]:
    """One forward pass on zeros in eval mode with forward hooks: each
    layer's first (input, output) shapes without the batch, and how many
    times it ran with a different input shape than its first (a shared
    layer at several sizes). Raises InputShapeError (a ValueError) naming the input shape when
    the model does not run on it."""
    device, dtype = device_dtype(model)
    shapes: Dict[str, Tuple[tuple, tuple]] = {}
    other: Dict[str, int] = {}
    handles = []
    for name, module in layers:
        def hook(mod, inputs, output, _name=name):
            if not inputs or not isinstance(inputs[0], torch.Tensor) or not isinstance(output, torch.Tensor):
                return
            seen = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))
            if _name not in shapes:
                shapes[_name] = seen
            elif shapes[_name] != seen:
                other[_name] = other.get(_name, 0) + 1
        handles.append(module.register_forward_hook(hook))
    x = torch.zeros((1,) + tuple(int(s) for s in input_shape), device=device, dtype=dtype)
    try:
        with EvalMode(model), torch.no_grad():
            model(x)
    except Exception as err:  # noqa: BLE001 - whatever the model raises, the cause is the input shape
        raise InputShapeError(f"the model does not run on an input of shape {list(x.shape)} ({type(err).__name__}: "
                         f"{err}); give the (C, H, W) it expects") from err
    finally:
        for h in handles:
            h.remove()
    return shapes, other


def layer_shapes(model: nn.Module, input_shape: Sequence[int]) -> Dict[str, Tuple[tuple, tuple]]:
    """``{name: ((C, H, W) input, (C, H, W) output)}`` of every conv layer of
    ``find_conv_layers``, by one forward pass on zeros in eval mode."""
    return trace_layers(model, input_shape, find_conv_layers(model))[0]
