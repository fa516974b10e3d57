"""Small helpers the Lipschitz modules share: int pairs, a module's device and
dtype, eval mode for a block, finite-or-None."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

IntPair = Union[int, Sequence[int]]


def pair(value: IntPair) -> Tuple[int, int]:
    """``3 -> (3, 3)``, ``(2, 1) -> (2, 1)``, ``(4,) -> (4, 4)``."""
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return (value[0], value[0])
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair, got {value!r}")
    return value  # type: ignore[return-value]


def device_dtype(module: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Device and dtype of the module's first floating-point parameter or
    buffer (CPU and the default dtype when it has none)."""
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


class EvalMode:
    """Put a module in eval mode for the block, restoring every submodule's
    own flag afterwards (``module.train(flag)`` would overwrite them all)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self.module

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag
        return False


def finite(x: Optional[float]) -> Optional[float]:
    """``x`` as a float, or None when it is None, NaN or infinite (records are JSON)."""
    return float(x) if x is not None and math.isfinite(x) else None
