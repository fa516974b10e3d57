"""A raw config mapping -> a validated ``Config``: types, ranges, closest-key
suggestions for typos, numbers read by ``numbers.parse_number``, pixel-space
radii and steps checked."""
from __future__ import annotations

import dataclasses
import math
import os
import typing
import warnings
from pathlib import Path
from typing import Any, Dict, List

from ..numbers import NAME_KEYS, NumberError, parse_number
from ..registry import closest
from .sections import _SWITCH, Config, ConfigError, ConfigWarning, MAX_SEED  # noqa: F401


def _finite_block(value, path: str, ctx: "_Ctx"):
    """parse_numbers with the key path in errors; NaN and infinity are refused."""
    if isinstance(value, dict):
        return {k: v if k in NAME_KEYS else _finite_block(v, f"{path}.{k}", ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_block(v, f"{path}[{i}]", ctx) for i, v in enumerate(value)]
    try:
        value = parse_number(value)
    except NumberError as err:
        raise ctx.fail(path, str(err)) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ctx.fail(path, f"{value} is not a finite number")
    return value


class _Ctx:
    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path or '<top level>'}: {problem}")


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(args[0])} or null"
    if origin in (list, List):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (dict, Dict):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _convert(value, tp, path: str, ctx: _Ctx):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], path, ctx)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ctx.fail(path, f"expected a mapping, got {value!r}")
        return _build(tp, value, path, ctx)
    if origin in (list, List):
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            if item_tp in (int, float) and isinstance(value, (int, float, str)) and not isinstance(value, bool):
                value = [value]  # `seeds: 0` means [0]; the item's own check names a bad value
            else:
                raise ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")
        return [_convert(v, item_tp, f"{path}[{i}]", ctx) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ctx.fail(path, f"expected a mapping, got {value!r}")
        return _finite_block(dict(value), path, ctx)
    if tp is bool:
        if not isinstance(value, bool):
            raise ctx.fail(path, f"expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        try:
            value = parse_number(value)
        except NumberError as err:
            raise ctx.fail(path, str(err)) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            wanted = "an integer" if tp is int else "a number (or a fraction like 8/255)"
            raise ctx.fail(path, f"expected {wanted}, got {value!r}")
        if not math.isfinite(value):
            raise ctx.fail(path, f"{value} is not a finite number")
        if tp is int:
            if value != int(value):
                raise ctx.fail(path, f"expected an integer, got {value!r}")
            return int(value)  # 1e6 reads as a float
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ctx.fail(path, f"expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {tp}")


def _check_range(value, meta, path, ctx):
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ctx.fail(path, f"{value!r} is not allowed{closest(value, choices)}; "
                             f"allowed: {', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        too_low = lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo))
        too_high = hi is not None and value > hi
        if too_low or too_high:
            bounds = []
            if lo is not None:
                bounds.append(f"{'>' if meta.get('min_exclusive') else '>='} {lo}")
            if hi is not None:
                bounds.append(f"<= {hi}")
            raise ctx.fail(path, f"{value} is out of range; must be {' and '.join(bounds)}")


def _build(cls, raw: Dict[str, Any], path: str, ctx: _Ctx):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            raise ctx.fail(where, f"unknown key{closest(key, fields)}; "
                                  f"allowed keys{' of ' + path if path else ''}: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in raw:
            value = raw[name]
            if isinstance(value, bool) and f.metadata.get("choices") == _SWITCH:
                value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a bool
            kwargs[name] = _convert(value, hints[name], sub, ctx)
            _check_range(kwargs[name], f.metadata, sub, ctx)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ctx.fail(sub, "is required")
    return cls(**kwargs)


def _check_lists(cfg: Config, ctx: _Ctx) -> None:
    if not cfg.normalizers:
        raise ctx.fail("normalizers", "must list at least one normalizer, e.g. [{name: vanilla}]")
    if not cfg.seeds:
        raise ctx.fail("seeds", "must list at least one seed, e.g. [0]")
    for i, ev in enumerate(cfg.eval.evaluators):
        if not isinstance(ev, dict) or "type" not in ev:
            raise ctx.fail(f"eval.evaluators[{i}]", "each evaluator needs a `type`, e.g. {type: pgd, steps: 10}")
    if sorted(cfg.train.milestones) != cfg.train.milestones:
        raise ctx.fail("train.milestones", f"must be increasing, got {cfg.train.milestones}")
    for i, seed in enumerate(cfg.seeds):
        if not 0 <= seed <= MAX_SEED:
            raise ctx.fail(f"seeds[{i}]", f"{seed} does not fit a 64-bit seed; use 0 to 2**63-1")


#: options that are a radius or a step in pixel space (inputs are in [0, 1]),
#: in train and in every evaluator's block
PIXEL_OPTIONS = ("eps", "step", "alpha", "linf_bound")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_pixel(value, path: str, ctx: _Ctx, *, warn_large: bool = True) -> None:
    if not _is_number(value):
        return  # not a number (or null): the evaluator's own check names it
    if not 0 < value <= 1:
        hint = f"; did you mean {value:g}/255?" if 1 < value <= 255 else ""
        raise ctx.fail(path, f"{value:g} is outside (0, 1]: inputs are in [0, 1], so a radius or step must be "
                             f"> 0 and <= 1{hint}")
    if value >= 0.5 and warn_large:
        warnings.warn(f"{ctx.source}: {path}: {value:g} is half the pixel range or more (inputs are in [0, 1]); "
                      f"did you mean a fraction of 255 such as 8/255?", ConfigWarning, stacklevel=2)


def _check_radii(cfg: Config, ctx: _Ctx) -> None:
    _check_pixel(cfg.train.eps, "train.eps", ctx)
    _check_pixel(cfg.train.step, "train.step", ctx)
    # A large eps beside a small one is a sanity point (accuracy must fall to
    # about chance there), not a typo: warn only when no evaluator has a small eps.
    small = [ev["eps"] for ev in cfg.eval.evaluators if _is_number(ev.get("eps")) and 0 < ev["eps"] < 0.5]
    for i, ev in enumerate(cfg.eval.evaluators):
        for key in PIXEL_OPTIONS:
            if key in ev:
                _check_pixel(ev[key], f"eval.evaluators[{i}].{key}", ctx, warn_large=not small)


def _check_budget(cfg: Config, ctx: _Ctx) -> None:
    """train.budget reads as a time or a step count, and a multistep schedule
    (milestones in epochs) cannot follow an epoch count the budget decides."""
    if cfg.train.budget is None:
        return
    from ..training.budget import BudgetError, parse_budget

    try:
        parse_budget(cfg.train.budget)
    except BudgetError as err:
        raise ctx.fail("train.budget", str(err)) from None
    if cfg.train.schedule == "multistep" and cfg.train.milestones:
        raise ctx.fail("train.schedule", "multistep milestones are epochs, but under train.budget the budget "
                                         "decides the epochs; use schedule: cosine, cyclic or constant")


#: Linux's limits on one name and a whole path, in bytes; a run adds up to
#: ``OUTPUT_HEADROOM`` below output_dir (runs/<run id>/<file>, temporary names)
NAME_MAX, PATH_MAX, OUTPUT_HEADROOM = 255, 4096, 512


def _check_output_dir(cfg: Config, ctx: _Ctx) -> None:
    """An output_dir the file system cannot hold is refused here, not met as
    an OSError deep in a run."""
    text = cfg.output_dir
    if not text.strip():
        raise ctx.fail("output_dir", "is empty; name a folder, e.g. results/my_grid")
    if "\0" in text:
        raise ctx.fail("output_dir", "holds a NUL character; name a folder, e.g. results/my_grid")
    for part in Path(text).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise ctx.fail("output_dir", f"the folder name {part[:40]!r}... is {size} bytes, more than the "
                                         f"{NAME_MAX} a file system allows in one name; shorten it")
    size = len(os.fsencode(os.path.abspath(text)))
    if size + OUTPUT_HEADROOM > PATH_MAX:
        raise ctx.fail("output_dir", f"its full path is {size} bytes; the files of a run below it need paths "
                                     f"of at most {PATH_MAX} bytes, so keep it under {PATH_MAX - OUTPUT_HEADROOM}")


def config_from_dict(raw: Dict[str, Any], source: str = "<config>") -> Config:
    ctx = _Ctx(source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ctx.fail("", "the config must be a YAML mapping of sections")
    cfg = _build(Config, raw, "", ctx)
    _check_lists(cfg, ctx)
    _check_radii(cfg, ctx)
    _check_budget(cfg, ctx)
    _check_output_dir(cfg, ctx)
    return cfg
