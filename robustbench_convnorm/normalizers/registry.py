"""Normalizer registry: ``@register_normalizer(name)`` on a ``Normalizer`` subclass."""
from __future__ import annotations

from typing import List

from ..registry import Registry
from .base import Normalizer

NORMALIZERS: Registry = Registry("normalizer", base=Normalizer, decorator="register_normalizer")


def register_normalizer(name: str):
    """Class decorator: make a ``Normalizer`` subclass available by ``name``."""
    return NORMALIZERS.register(name)


def get_normalizer(name: str, **options) -> Normalizer:
    """Build the normalizer ``name`` with its options; unknown names or options stop here."""
    return NORMALIZERS.build(name, **options)


def list_normalizers() -> List[str]:
    return NORMALIZERS.names()
