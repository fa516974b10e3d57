"""Normalizer registry: ``@register_normalizer(name)`` on a ``Normalizer`` subclass."""
from __future__ import annotations

from typing import List

from ..registry import Registry, RegistryError, check_options
from .base import Normalizer

NORMALIZERS: Registry = Registry("normalizer")


def register_normalizer(name: str):
    """Class decorator: make a ``Normalizer`` subclass available by ``name``."""
    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, Normalizer)):
            raise RegistryError(f"@register_normalizer('{name}') needs a Normalizer subclass, got {cls!r}")
        return NORMALIZERS.register(name)(cls)
    return decorator


def get_normalizer(name: str, **options) -> Normalizer:
    """Build the normalizer ``name`` with its options; unknown names or options stop here."""
    cls = NORMALIZERS.get(name)
    check_options("normalizer", name, cls.__init__, options)
    return cls(**options)


def list_normalizers() -> List[str]:
    return NORMALIZERS.names()
