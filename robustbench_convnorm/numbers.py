"""Numbers as configs write them: the one reader, so that every part of the
harness reads ``8/255`` and ``1e-3`` alike.

    parse_number("8/255") -> 0.0313...      parse_number("1e-3") -> 0.001
    parse_number("0.1")   -> 0.1            parse_number("pgd")  -> "pgd" (not a number: unchanged)
    parse_number("8/0")   -> NumberError

PyYAML (YAML 1.1) reads ``1e-3`` and ``1E6`` as strings, since its floats need a
dot; fractions are strings too. Values that are not strings pass through.
"""
from __future__ import annotations

import re

__all__ = ["NumberError", "parse_number", "parse_numbers", "NAME_KEYS"]


class NumberError(ValueError):
    """A string that looks like a number but is not one (a zero denominator)."""


_DECIMAL = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"
_FRACTION = re.compile(rf"^\s*({_DECIMAL})\s*/\s*({_DECIMAL})\s*$", re.I)
# a decimal point or an exponent: what YAML 1.1 leaves as a string (1e-3, 1E6, .5e2)
_FLOAT = re.compile(rf"^\s*(?=[^/]*[.eE])({_DECIMAL})\s*$", re.I)
#: keys of free-form blocks that hold names, never numbers
NAME_KEYS = ("name", "type", "label")


def parse_number(value):
    """The one reader of numbers in configs: '8/255' -> 0.0313..., '1e-3' ->
    0.001; other values unchanged. A zero denominator is a NumberError."""
    if not isinstance(value, str):
        return value
    m = _FRACTION.match(value)
    if m:
        num, den = float(m.group(1)), float(m.group(2))
        if den == 0:
            raise NumberError(f"{value!r} divides by zero; write a fraction like 8/255")
        return num / den
    if _FLOAT.match(value):
        return float(value)
    return value


def parse_numbers(value):
    """parse_number applied through dicts and lists (free-form option blocks)."""
    if isinstance(value, dict):
        return {k: v if k in NAME_KEYS else parse_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [parse_numbers(v) for v in value]
    return parse_number(value)
