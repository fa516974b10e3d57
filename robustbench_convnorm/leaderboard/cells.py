"""The one cell formatter every renderer shares: the same number reads the same
in Markdown, HTML and LaTeX (each renderer escapes the text for its format)."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

DASH = "–"


def isnan(x: Any) -> bool:
    if x is None or x is pd.NA:
        return True
    try:
        return isinstance(x, float) and math.isnan(x)
    except TypeError:
        return False


def fmt_value(m: str, v: float) -> str:
    if m == "params":
        return f"{v:,.0f}"
    if m in ("train_seconds_per_epoch", "train_seconds", "eval_seconds", "train_images_per_second"):
        return f"{v:.1f}"
    if m == "peak_memory_mb":
        return f"{v:,.0f}"
    if m == "mean_layer_spectral_norm" or "cond" in m:
        return f"{v:.3f}"
    return f"{v:.2f}"


def fmt_cell(m: str, mean: float, std: float) -> str:
    """'mean ± std'; just the mean for one seed (std empty); '–' with no value."""
    if isnan(mean):
        return DASH
    if isnan(std) or (m == "params" and std == 0):
        return fmt_value(m, mean)
    return f"{fmt_value(m, mean)} ± {fmt_value(m, std)}"


def fmt_interval(m: str, lo: float, hi: float) -> str:
    """'[61.2, 71.3]', or '' with no interval."""
    if isnan(lo) or isnan(hi):
        return ""
    return f"[{fmt_value(m, lo)}, {fmt_value(m, hi)}]"


def fmt_eps(e: Any) -> str:
    """8/255 where eps is a whole number of 255ths up to 32/255 (how L∞ budgets are
    usually given), else the number: 0.1, 0.2."""
    if isnan(e):
        return DASH
    k = e * 255
    if e != 0 and abs(k - round(k)) < 1e-6 and abs(k) <= 32:
        return f"{round(k)}/255"
    return f"{e:g}"


def fmt_p(p: float) -> str:
    if isnan(p):
        return ""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def is_true(v: Any) -> bool:
    """True for True and numpy's True; False for False, NA and None."""
    try:
        return bool(v) if v is not None and v is not pd.NA else False
    except TypeError:
        return False


#: the rank cell of a model whose evaluation failed a severe sanity check (reliability.py)
UNRELIABLE = "unreliable"


def rank_text(rank: Any, tied: Any, unreliable: Any = False) -> str:
    """'3', '3 (tied)' where the model does not differ significantly from the one above, '–' unranked,
    'unreliable' where its evaluation failed a severe sanity check."""
    if is_true(unreliable):
        return UNRELIABLE
    if isnan(rank):
        return DASH
    return f"{int(rank)} (tied)" if is_true(tied) else str(int(rank))


def count_text(v: Any) -> str:
    """A count stored as a float: 6.0 -> '6'."""
    if isnan(v):
        return DASH
    try:
        return str(int(v)) if float(v) == int(float(v)) else str(v)
    except (TypeError, ValueError):
        return str(v)


def text(v: Any) -> str:
    return "?" if isnan(v) else str(v)


def context_text(row) -> str:
    return f"{text(row['arch'])} · {text(row['train_method'])} · train eps {fmt_eps(row['train_eps'])}"


def model_text(model: Any, unreliable: Any = False) -> str:
    """The model's label, with ' (unreliable)' where its evaluation failed a severe sanity check."""
    return f"{model} ({UNRELIABLE})" if is_true(unreliable) else str(model)


def model_headers(rows) -> list:
    """The labels of a frame of models (the paper layout's column heads), unreliable ones marked."""
    marks = rows["unreliable"] if "unreliable" in rows else [False] * len(rows)
    return [model_text(m, u) for m, u in zip(rows["model"], marks)]
