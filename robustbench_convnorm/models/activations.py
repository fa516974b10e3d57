"""1-Lipschitz activations for Lipschitz networks, chosen by name
(``model.options.activation``): MaxMin (Anil et al., ICML 2019) sorts pairs
of channels, GroupSort sorts groups; both are permutations of their input
per example, so they are 1-Lipschitz and preserve the gradient norm."""
from __future__ import annotations

import torch
from torch import nn


class MaxMin(nn.Module):
    """Channels split in two halves a, b -> (max(a, b), min(a, b))."""

    def forward(self, x):
        if x.shape[1] % 2:
            raise ValueError(f"maxmin needs an even number of channels, got {x.shape[1]}")
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)

    def lipschitz_bound(self) -> float:
        return 1.0


class GroupSort(nn.Module):
    """Consecutive channel groups of ``group_size`` sorted in descending order
    (GroupSort-2 is MaxMin up to a channel permutation)."""

    def __init__(self, group_size: int = 2):
        super().__init__()
        self.group_size = int(group_size)

    def forward(self, x):
        b, c = x.shape[:2]
        if c % self.group_size:
            raise ValueError(f"groupsort needs channels divisible by {self.group_size}, got {c}")
        g = x.reshape(b, c // self.group_size, self.group_size, *x.shape[2:])
        return g.sort(dim=2, descending=True).values.reshape(x.shape)

    def lipschitz_bound(self) -> float:
        return 1.0

    def extra_repr(self):
        return f"group_size={self.group_size}"


class ReLU(nn.ReLU):
    def lipschitz_bound(self) -> float:
        return 1.0


ACTIVATIONS = {"maxmin": MaxMin, "groupsort": lambda: GroupSort(4), "relu": ReLU}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
