"""Pieces shared by the model builders: input normalization inside the model,
and conv construction through a normalizer with the conv's role tagged."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..normalizers.base import CONV_ROLES, Normalizer


class InputNormalize(nn.Module):
    """(x - mean) / std with the data set's statistics, so models take [0,1]
    pixels and attacks work in pixel space (as RobustBench models do)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std

    def lipschitz_bound(self) -> float:
        """1 / the smallest std: the L2 constant of the per-channel scaling."""
        return float(1.0 / self.std.min())


def make_conv(normalizer: Normalizer, role: str, in_channels: int, out_channels: int,
              kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Module:
    assert role in CONV_ROLES, role
    conv = normalizer.conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
    conv.conv_role = role
    return conv


def norm_layer(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


def scaled(width: int, multiplier: float) -> int:
    return max(1, int(round(width * multiplier)))
