"""Option parsing and result naming shared by the evaluators: numbers given
as ``8/255``, checked integers, booleans and choices, and the
``_<option><value>`` suffixes of result names (see ``attacks.base``)."""
from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any, Iterable, Optional, Sequence, Tuple

import numpy as np


def as_float(value: Any, what: str) -> float:
    """A number from an int/float or a string like "8/255" or "0.03"."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        out = float(value)
    elif isinstance(value, str):
        text = value.replace(" ", "")
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                out = float(num) / float(den)
            else:
                out = float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{what} must be a number or a fraction like '8/255', got {value!r}") from None
    else:
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return out


def as_int(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{what} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


def as_bool(value: Any, what: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{what} must be true or false, got {value!r}")


def as_choice(value: Any, what: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def format_value(value: Any, unit: str = "") -> str:
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if value is None:
        return "none"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        short = f"{value:.3g}"
        if float(short) != value and unit == "pixel":
            k = value * 255.0
            if abs(k - round(k)) < 1e-6 and round(k) != 0:
                return str(int(round(k)))
        text = short if float(short) == value else f"{value:g}"
        return text.replace(".", "p").replace("-", "m").replace("+", "")
    return re.sub(r"[^A-Za-z0-9]", "", str(value))


def name_suffix(options: Iterable[Tuple[str, Any, Any, str]]) -> str:
    parts = []
    for key, value, default, unit in options:
        if _same(value, default):
            continue
        parts.append(key.replace("_", "") + format_value(value, unit))
    return "".join("_" + p for p in parts)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


def fraction_text(value: Optional[float]) -> Optional[str]:
    """'8/255' for a whole number of 255ths, else None (for readable records)."""
    if value is None:
        return None
    frac = Fraction(value).limit_denominator(255)
    if abs(float(frac) - value) < 1e-9 and 255 % frac.denominator == 0:
        return f"{int(frac * 255)}/255"
    return None
