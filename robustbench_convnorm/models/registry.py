"""Model registry: builders take a normalizer (the conv factory) and never name one."""
from __future__ import annotations

from typing import List, Sequence

from torch import nn

from ..normalizers.base import Normalizer
from ..registry import Registry, check_options

MODELS: Registry = Registry("model")


def register_model(name: str):
    return MODELS.register(name)


def build_model(name: str, normalizer: Normalizer, *, num_classes: int, in_channels: int,
                mean: Sequence[float], std: Sequence[float], batchnorm: bool, **options) -> nn.Module:
    builder = MODELS.get(name)
    check_options("model", name, builder, options)
    return builder(normalizer, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std,
                   batchnorm=batchnorm, **options)


def list_models() -> List[str]:
    return MODELS.names()
