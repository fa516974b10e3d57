"""A model's Lipschitz report: every conv layer's spectral norm, bounds and
channel condition numbers, as plain JSON data (``record["lipschitz"]``)."""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ._util import EvalMode, device_dtype, finite, pair
from .bounds import CHECK_RTOL, all_bounds
from .gram import GRAM_ITERS, gram_iteration_bound
from .layers import find_conv_layers, trace_layers
from .probes import layer_channel_condition, layer_spectral_norm, weight_is_operator
from .spectra import circular_spectral_norm, dilate_kernel, divisible, weight_channel_condition
from .tensor_norms import f4_bound, flat_bound

__all__ = ["model_report"]

log = logging.getLogger("robustbench_convnorm.lipschitz")

#: Every row has these keys (None where not computed).
VALUE_KEYS = ("spectral_norm", "exact_circular", "tn_bound", "f4_bound", "flat_bound", "bounds_of", "tn_confirmed",
              "tn_check", "channel_cond", "channel_cond_max", "channel_cond_preaffine", "channel_cond_weight")
#: The bound panel (issue 21): Gram iteration beside the others, each bound's
#: ratio to the exact circular norm and the seconds each took, and the sound
#: bound of the layer as computed that the network bound uses (any normalizer).
PANEL_METHODS = ("exact", "gram", "tn", "f4", "flat")
PANEL_KEYS = (("gram_bound",) + tuple(f"{m}_ratio" for m in PANEL_METHODS[1:])
              + tuple(f"seconds_{m}" for m in PANEL_METHODS) + ("layer_bound", "layer_bound_rule"))
VALUE_KEYS = VALUE_KEYS + PANEL_KEYS
#: What each number is (written into every report, docs/lipschitz.md explains): only
#: "sound" values bound the layer or the network from above; TN is HOPM's estimate.
SOUNDNESS = {
    "lip_network_log10": "sound: upper bound of the whole network (L2), or None without one",
    "layer_bound": "sound: upper bound of the layer as computed",
    "gram_bound": "sound: upper bound of the circular conv of the kernel (of the layer where bounds_of = layer "
                  "and the layer is circular)",
    "f4_bound": "sound: upper bound of the kernel's conv, any padding",
    "flat_bound": "sound: upper bound of the kernel's conv, any padding",
    "exact_circular": "exact for a circular layer; for a zero-padded one the norm of its circular version",
    "tn_bound": "estimate: HOPM's lower estimate of the TN upper bound, not a certificate",
    "spectral_norm": "estimate: power iteration, a lower estimate of the layer's norm",
    "lip_product_log10": "estimate: product of the conv layers' power-iteration norms only; bounds nothing",
}


def _as_list(v) -> Optional[list]:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return [v, v]
    return [int(x) for x in v]


def _mean_max(cond: torch.Tensor) -> Tuple[Optional[float], Optional[float]]:
    ok = cond[~cond.isnan()]
    if not ok.numel():
        return None, None
    return finite(float(ok.mean())), finite(float(ok.max()))


def _nonfinite(module: nn.Module) -> List[str]:
    return [n for n, t in list(module.named_parameters()) + list(module.named_buffers())
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


class _Options:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _weight_columns(name: str, module: nn.Module, weight: Optional[torch.Tensor], row: Dict[str, Any],
                    shapes: Tuple[tuple, tuple], opt: _Options, notes: List[str]
                    ) -> Tuple[Optional[torch.Tensor], bool]:
    """Fill the weight-based columns from ``weight`` (the layer's weight as
    read in eval mode); returns (the kernel convolved, whether it is the
    layer's own operator)."""
    in_shape, out_shape = shapes
    c_in, H, W = in_shape
    groups = int(getattr(module, "groups", 1))
    # a weight-based column needs a conv kernel of this layer's geometry
    # (not, e.g., Cayley's parameter after its space-to-depth stride)
    if not (isinstance(weight, torch.Tensor) and weight.dim() == 4 and int(weight.shape[1]) * groups == int(c_in)):
        if getattr(module, "conv_role", None) is None:
            notes.append(f"{name} ({type(module).__name__}): no 4-D weight matching its {c_in} input channels; "
                         f"only the power-iteration norm and the condition numbers of the layer")
        return None, False
    mode = getattr(module, "padding_mode", "zeros")
    stride = pair(getattr(module, "stride", 1))
    is_op = weight_is_operator(module, in_shape)
    # a circular padding wider than the kernel's reach repeats outputs, which the bounds do not cover
    wraps_twice = mode == "circular" and any(o > -(-i // s) for o, i, s in zip(out_shape[1:], in_shape[1:], stride))
    of_layer = is_op and (mode == "zeros" or (mode == "circular" and not wraps_twice))
    if is_op and not of_layer:
        notes.append(f"{name}: padding_mode={mode!r} with padding {getattr(module, 'padding', None)} enlarges the "
                     f"input beyond a plain or circular conv, so the bounds are those of its weight's conv on the "
                     f"padded input, not of the layer (marked 'weight')")
    kernel = dilate_kernel(weight.detach(), getattr(module, "dilation", 1))
    t_all = time.perf_counter()
    b = all_bounds(kernel, stride, (H, W) if (opt.exact and of_layer) else None, groups=groups,
                   measured=row["spectral_norm"] if of_layer else None,
                   generator=opt.cpu_gen if kernel.device.type == "cpu" else None,
                   tn_iters=opt.tn_iters, tn_restarts=opt.tn_restarts, tn_rounds=opt.tn_rounds)
    row.update(b)
    row["bounds_of"] = "layer" if of_layer else "weight"
    _panel(row, kernel, stride, (H, W) if (opt.exact and of_layer) else None, groups, time.perf_counter() - t_all)
    if b["tn_check"] == "below_measured":
        floor = max(v for v in (b["exact_circular"], row["spectral_norm"] if of_layer else None) if v is not None)
        notes.append(f"{name}: the TN estimate {b['tn_bound']:.6g} stays below the measured norm {floor:.6g} after "
                     f"a recompute with more starts; HOPM found only a lower estimate of the TN bound, so here it is "
                     f"not an upper bound (F4 = {b['f4_bound']:.6g} is)")
    elif not b["tn_confirmed"]:
        notes.append(f"{name}: the TN search ended unconfirmed (each round of fresh starts found a larger value, "
                     f"or its own starts stayed below what its Fourier witnesses reached: a kernel that defeats "
                     f"them); the value is a lower estimate of the TN bound, at least the circular norm; raise "
                     f"tn_rounds, or read F4 as the bound")
    return kernel, of_layer


def _timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - t0, 6)


def _panel(row: Dict[str, Any], kernel: torch.Tensor, stride, size, groups: int, all_seconds: float) -> None:
    """Gram iteration, the ratios to the exact norm and each method's time.
    Exact, F4 and flat are timed again on their own (cheap); the TN search's
    time is all_bounds' time less theirs."""
    exact = row["exact_circular"]
    t_exact = t_gram = None
    if exact is not None:
        _, t_exact = _timed(lambda: circular_spectral_norm(kernel, size, stride, groups))
        row["gram_bound"], t_gram = _timed(lambda: gram_iteration_bound(kernel, size, stride, groups))
    _, t_f4 = _timed(lambda: f4_bound(kernel, stride))
    _, t_flat = _timed(lambda: flat_bound(kernel, stride))
    row.update({"seconds_exact": t_exact, "seconds_gram": t_gram, "seconds_f4": t_f4, "seconds_flat": t_flat,
                "seconds_tn": round(max(0.0, all_seconds - (t_exact or 0.0) - t_f4 - t_flat), 6)})
    if exact:
        for method in PANEL_METHODS[1:]:
            value = row.get(f"{method}_bound")
            row[f"{method}_ratio"] = finite(value / exact) if value is not None else None


def _layer_bound(row: Dict[str, Any], module: nn.Module, in_shape) -> None:
    """The sound bound of the layer as computed (lipschitz.network's rule)."""
    from .network import Unbounded, module_bound
    try:
        row["layer_bound"], row["layer_bound_rule"] = module_bound(module, in_shape)
    except Unbounded as err:
        row["layer_bound_rule"] = f"none: {err}"


def _layer_row(name: str, module: nn.Module, shapes: Tuple[tuple, tuple], opt: _Options
               ) -> Tuple[Dict[str, Any], List[str]]:
    in_shape, out_shape = shapes
    # read once, in eval mode: a parametrized weight (spectral_norm) read in
    # training mode runs a power-iteration step and changes the layer's buffers
    with EvalMode(module), torch.no_grad():
        weight = getattr(module, "weight", None)
    # a 2-D conv, tagged or conv-like; not a transposed or 1-D/3-D torch conv
    two_d = len(in_shape) == 3 and (isinstance(module, nn.Conv2d) or not isinstance(module, nn.modules.conv._ConvNd))
    stride = getattr(module, "stride", None)
    row: Dict[str, Any] = {
        "name": name,
        "role": getattr(module, "conv_role", None) or "untagged",
        "type": type(module).__name__,
        "shape": [int(s) for s in weight.shape] if isinstance(weight, torch.Tensor) else None,
        "stride": (list(pair(stride)) if two_d else _as_list(stride)) if stride is not None else None,
        "padding": _as_list(getattr(module, "padding", None)),
        "in_size": [int(s) for s in in_shape[1:]],
        "out_size": [int(s) for s in out_shape[1:]],
    }
    row.update({k: None for k in VALUE_KEYS})
    notes: List[str] = []
    bad = _nonfinite(module)
    if bad:
        notes.append(f"{name}: non-finite values in {', '.join(bad)}; no norms for this layer")
        return row, notes
    try:
        row["spectral_norm"] = finite(layer_spectral_norm(module, in_shape, n_iter=opt.power_iters,
                                                          tol=opt.power_tol, generator=opt.gen))
    except Exception as err:  # noqa: BLE001 - an unusual layer must not sink the whole report
        notes.append(f"{name} ({type(module).__name__}): power iteration failed ({type(err).__name__}: {err})")
        return row, notes
    if row["spectral_norm"] is None:
        notes.append(f"{name}: power iteration gave a non-finite value")
    if not two_d:
        notes.append(f"{name} ({type(module).__name__}): only the power-iteration norm; the bounds and condition "
                     f"numbers cover 2-D convolutions")
        return row, notes
    _layer_bound(row, module, in_shape)
    try:
        kernel, of_layer = _weight_columns(name, module, weight, row, shapes, opt, notes)
        H, W = in_shape[1:]
        sh, sw = row["stride"] or (1, 1)
        if of_layer and divisible((H, W), (sh, sw)):
            # the layer is conv(kernel): the same spectrum, from the kernel (cheaper than probing)
            cond = weight_channel_condition(kernel, (H, W), (sh, sw))
        else:
            cond = layer_channel_condition(module, in_shape)
        row["channel_cond"], row["channel_cond_max"] = _mean_max(cond)
        if isinstance(getattr(module, "affine", None), nn.Module):
            # ConvNorm: the normalized operator before its learnable depthwise affine
            saved = module.affine
            try:
                module.affine = None
                row["channel_cond_preaffine"] = _mean_max(layer_channel_condition(module, in_shape))[0]
            finally:
                module.affine = saved
        if kernel is not None:
            same = of_layer and (sh, sw) == (1, 1)  # then it is the column just computed
            row["channel_cond_weight"] = _mean_max(cond if same else weight_channel_condition(kernel, (H, W)))[0]
    except Exception as err:  # noqa: BLE001
        notes.append(f"{name} ({type(module).__name__}): bounds or condition numbers failed "
                     f"({type(err).__name__}: {err})")
    return row, notes


def model_report(model: nn.Module, input_shape: Sequence[int], *, power_iters: int = 100, power_tol: float = 1e-5,
                 tn_iters: int = 100, tn_restarts: int = 8, tn_rounds: int = 4, exact: bool = True,
                 seed: int = 0) -> Dict[str, Any]:
    """Per-layer spectral norms, bounds and condition numbers of every conv
    layer (``layers.find_conv_layers``: tagged or not) for inputs of
    ``input_shape`` = (C, H, W).

    Args:
        model: any module taking (N, C, H, W) inputs; it runs once on zeros.
        input_shape: (C, H, W).
        power_iters, power_tol: ``layer_spectral_norm``'s ``n_iter``, ``tol``.
        tn_iters, tn_restarts, tn_rounds: the TN search (``hopm_search``).
        exact: compute the exact circular norms (their cost grows with the
            input size and the channels).
        seed: seeds the power iteration and HOPM starts.

    Returns:
        Plain JSON data (store it as ``record["lipschitz"]``)::

            {"input_shape": [C, H, W], "settings": {...},
             "layers": [{"name", "role" ("untagged" for untagged layers), "type",
                         "shape", "stride", "padding", "in_size", "out_size",
                         "spectral_norm",    # power iteration on the actual layer (eval mode)
                         "exact_circular",   # exact norm of the circular conv with the kernel
                         "tn_bound", "f4_bound", "flat_bound",
                         "bounds_of",        # "layer" | "weight" | None: what the four columns above bound
                         "tn_confirmed", "tn_check",  # see bounds.all_bounds
                         "channel_cond", "channel_cond_max", "channel_cond_preaffine",
                         "channel_cond_weight", "seconds"}, ...],
             "lip_product_log10": float | None,  # sum of log10(spectral_norm); None if any is missing
             "lip_network_log10": float | None,  # log10 of the sound bound of the whole network (L2)
             "network": {...},                   # lipschitz.network.NetworkBound.summary()
             "mean_layer_spectral_norm": float | None,
             "warnings": [str, ...]}           # also logged

    Example::

        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2))
        >>> report = model_report(model, (3, 32, 32))
        >>> [r["role"] for r in report["layers"]], report["warnings"]
        (['untagged', 'untagged'], [])
    """
    device, _ = device_dtype(model)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    cpu_gen = torch.Generator()
    cpu_gen.manual_seed(seed)
    opt = _Options(power_iters=power_iters, power_tol=power_tol, tn_iters=tn_iters, tn_restarts=tn_restarts,
                   tn_rounds=tn_rounds, exact=exact, gen=gen, cpu_gen=cpu_gen)
    layers = find_conv_layers(model)
    shapes, resized = trace_layers(model, input_shape, layers)
    warnings: List[str] = []
    if not layers:
        warnings.append(f"no conv layers found in {type(model).__name__} (looked for tagged modules, nn.Conv* "
                        f"and modules like nn.Conv2d); lip_product_log10 is None")
    rows: List[Dict[str, Any]] = []
    for name, module in layers:
        if name not in shapes:
            warnings.append(f"{name} ({type(module).__name__}): not run by the forward pass on {list(input_shape)}; "
                            f"left out")
            continue
        if name in resized:
            warnings.append(f"{name}: runs on {resized[name] + 1} input sizes; the row is for the first, "
                            f"{list(shapes[name][0])}")
        t0 = time.perf_counter()
        row, notes = _layer_row(name, module, shapes[name], opt)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
        warnings += notes
    norms = [r["spectral_norm"] for r in rows]
    missing = [r["name"] for r in rows if r["spectral_norm"] is None]
    product = None
    if rows and missing:
        warnings.append(f"lip_product_log10 is None: no spectral norm for {', '.join(missing)}")
    elif rows and min(norms) <= 0:
        warnings.append("lip_product_log10 is None: a layer has spectral norm 0")
    elif rows:
        product = sum(math.log10(n) for n in norms)
    known = [n for n in norms if n is not None]
    from .network import network_bound
    network = network_bound(model, input_shape)
    for w in network.warnings:  # kept in report["network"]["warnings"]: the layer table's warnings stay its own
        log.warning("lipschitz: network bound: %s", w)
    for w in warnings:
        log.warning("lipschitz: %s", w)
    return {
        "input_shape": [int(s) for s in input_shape],
        "settings": {"power_iters": power_iters, "power_tol": power_tol, "tn_iters": tn_iters,
                     "tn_restarts": tn_restarts, "tn_rounds": tn_rounds, "tn_check_rtol": CHECK_RTOL, "seed": seed,
                     "channel_cond": "mean over output channels"},
        "layers": rows,
        "lip_product_log10": product,
        # the whole network's sound L2 bound (lipschitz.network); None when a piece has no rule
        "lip_network_log10": network.log10,
        "soundness": dict(SOUNDNESS),
        "network": network.summary(),
        "mean_layer_spectral_norm": (sum(known) / len(known)) if known else None,
        "warnings": warnings,
    }
