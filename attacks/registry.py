"""Evaluator registry: ``@register_evaluator(type)`` on an ``Evaluator`` subclass.

Unknown types and unknown options stop with one message (through the shared
``robustbench_convnorm.registry``) naming the closest match and what is allowed.
"""
from __future__ import annotations

from typing import List

from robustbench_convnorm.registry import Registry

from .base import Evaluator

EVALUATORS: Registry = Registry("evaluator", base=Evaluator, decorator="register_evaluator")


def register_evaluator(type_name: str):
    """Class decorator: make an ``Evaluator`` subclass available as ``type_name``."""
    return EVALUATORS.register(type_name)


def get_evaluator(type_name: str, **options) -> Evaluator:
    """Build the evaluator ``type_name`` with its options (``name`` among them)."""
    return EVALUATORS.build(type_name, **options)


def list_evaluators() -> List[str]:
    return EVALUATORS.names()
