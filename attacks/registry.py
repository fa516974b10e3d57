"""Evaluator registry: ``@register_evaluator(type)`` on an ``Evaluator`` subclass.

Unknown types and unknown options stop with one message (through the shared
``robustbench_convnorm.registry``) naming the closest match and what is allowed.
"""
from __future__ import annotations

from typing import List

from robustbench_convnorm.registry import Registry, RegistryError, check_options

from .base import Evaluator

EVALUATORS: Registry = Registry("evaluator")


def register_evaluator(type_name: str):
    """Class decorator: make an ``Evaluator`` subclass available as ``type_name``."""
    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
            raise RegistryError(f"@register_evaluator('{type_name}') needs an Evaluator subclass, got {cls!r}")
        return EVALUATORS.register(type_name)(cls)
    return decorator


def get_evaluator(type_name: str, **options) -> Evaluator:
    """Build the evaluator ``type_name`` with its options (``name`` among them)."""
    cls = EVALUATORS.get(type_name)
    check_options("evaluator", type_name, cls.__init__, options)
    return cls(**options)


def list_evaluators() -> List[str]:
    return EVALUATORS.names()
