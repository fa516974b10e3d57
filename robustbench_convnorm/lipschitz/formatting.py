"""``model_report``'s data as a markdown table, each bound tagged with what
it bounds."""
from __future__ import annotations

from typing import Any, Dict

__all__ = ["REPORT_COLUMNS", "format_report"]

#: (header, row key) of the printed table, in order.
REPORT_COLUMNS = [
    ("layer", "name"), ("role", "role"), ("shape", "shape"), ("s", "stride"), ("p", "padding"),
    ("in", "in_size"), ("sigma (power)", "spectral_norm"), ("exact circ", "exact_circular"),
    ("TN", "tn_bound"), ("F4", "f4_bound"), ("flat", "flat_bound"),
    ("cond (layer)", "channel_cond"), ("cond max", "channel_cond_max"),
    ("cond (pre-affine)", "channel_cond_preaffine"), ("cond (weight)", "channel_cond_weight"),
]

_BOUND_KEYS = ("exact_circular", "tn_bound", "f4_bound", "flat_bound")
#: TN marks: the estimate was recomputed / stayed below a measured norm / was not confirmed.
_TN_MARKS = {"recomputed": "*", "below_measured": "!"}

LEGEND = (
    "sigma (power): power iteration on the layer as computed (eval mode), the number the totals use. "
    "exact circ / TN / F4 / flat come from the module's weight: '(layer)' = the layer is conv2d(x, weight), "
    "so they bound the layer as computed (exact circ: its circular version); '(weight)' = the layer is more "
    "than its weight (ConvNorm's filter and affine, Cayley's Q, a reflect padding), so they bound only the "
    "raw weight's conv and may lie below sigma (power). TN is HOPM's lower estimate of the TN bound; "
    "* = recomputed with more starts after falling below a measured norm, ! = still below it (not an upper "
    "bound here), ? = search unconfirmed. cond: channel-wise condition number, mean over output channels."
)


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v)
    return str(v).replace("|", "\\|")


def _cell(row: Dict[str, Any], key: str) -> str:
    v = row.get(key)
    if key in ("stride", "padding") and isinstance(v, list) and len(set(v)) == 1:
        v = v[0]
    text = _fmt(v)
    if key in _BOUND_KEYS and v is not None:
        if key == "tn_bound":
            text += _TN_MARKS.get(row.get("tn_check"), "") + ("?" if row.get("tn_confirmed") is False else "")
        text += f" ({row.get('bounds_of') or '?'})"
    return text


def format_report(report: Dict[str, Any]) -> str:
    """A markdown table of ``model_report``'s rows, the totals, a legend and
    the report's warnings.

    Example::

        >>> print(format_report(model_report(model, (3, 32, 32))))
        | layer | role | ... | TN | ...
        | conv1 | stem | ... | 4.213 (layer) | ...
    """
    rows = report.get("layers") or []
    lines = []
    if rows:
        lines += ["| " + " | ".join(h for h, _ in REPORT_COLUMNS) + " |",
                  "|" + "|".join("---" for _ in REPORT_COLUMNS) + "|"]
        lines += ["| " + " | ".join(_cell(row, key) for _, key in REPORT_COLUMNS) + " |" for row in rows]
    else:
        lines.append("(no conv layers: nothing to report)")
    lines.append("")
    lines.append(f"input shape {_fmt(report.get('input_shape'))}; {len(rows)} conv layers; "
                 f"lip_product_log10 = {_fmt(report.get('lip_product_log10'), 4)}; "
                 f"mean_layer_spectral_norm = {_fmt(report.get('mean_layer_spectral_norm'), 4)}")
    if rows:
        lines.append(LEGEND)
    warnings = report.get("warnings") or []
    if warnings:
        lines.append("")
        lines.append(f"warnings ({len(warnings)}):")
        lines += [f"- {w}" for w in warnings]
    return "\n".join(lines)
