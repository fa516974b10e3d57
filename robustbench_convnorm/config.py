"""Configs: YAML -> typed, validated dataclasses -> a grid of runs.

Every problem (unknown key, wrong type, value out of range) stops before any
work with one ``ConfigError`` naming the file, the key path and what is
allowed. Numbers may be written as fractions (``eps: 8/255``) or with an
exponent (``lr: 1e-3``, which PyYAML alone reads as a string); every number
of a config, ``--set`` values and free-form option blocks included, is read
by :func:`parse_number`. Radii and steps live in pixel space, where inputs
are in [0, 1]: outside (0, 1] they are refused, from 0.5 on they warn.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from . import identity
from .numbers import NAME_KEYS, NumberError, parse_number, parse_numbers  # noqa: F401  (parse_numbers: API)
from .registry import closest


class ConfigError(ValueError):
    """A config problem; the message names the file, the key and the fix."""


class ConfigWarning(UserWarning):
    """A value that is allowed but probably not meant (eps >= 0.5)."""


#: seeds go to torch's 64-bit generators and the tables' int64 columns
MAX_SEED = 2 ** 63 - 1


def _opt(default=dataclasses.MISSING, *, choices=None, min=None, max=None, min_exclusive=False,
         factory=None, doc=""):
    meta = {"choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------- sections

@dataclass
class AugmentConfig:
    crop_padding: int = _opt(4, min=0, doc="random crop with this much zero padding (0: off)")
    flip: bool = _opt(True, doc="random horizontal flip")


@dataclass
class DataConfig:
    source: str = _opt("digits", doc="data source: cifar10, cifar100, imagefolder, digits, synthetic")
    root: Optional[str] = _opt(None, doc="directory (or .zip for imagefolder) holding the data")
    download: bool = _opt(True, doc="cifar: try torchvision's download when files are missing")
    options: Dict[str, Any] = _opt(factory=dict, doc="source-specific options")
    train_fraction: float = _opt(1.0, min=0.0, max=1.0, min_exclusive=True,
                                 doc="use this fraction of the training set (class-stratified)")
    label_noise: float = _opt(0.0, min=0.0, max=1.0, doc="symmetric label noise rate on train")
    val_size: int = _opt(0, min=0, doc="examples carved from train as a validation split")
    augment: AugmentConfig = _opt(factory=AugmentConfig)


@dataclass
class ModelConfig:
    arch: str = _opt("convnet", doc="resnet18, vgg16 or convnet")
    width: float = _opt(1.0, min=0.0, min_exclusive=True, doc="channel width multiplier")


@dataclass
class NormalizerEntry:
    name: str = _opt(doc="a registered normalizer")
    options: Dict[str, Any] = _opt(factory=dict, doc="the normalizer's options")
    overrides: Dict[str, Any] = _opt(factory=dict,
                                     doc="config overrides for this normalizer, e.g. {train.lr: 0.01}")
    label: Optional[str] = _opt(None, doc="display name (default: name)")


@dataclass
class TrainConfig:
    method: str = _opt("natural", choices=["natural", "free", "fgsm_rs"])
    epochs: int = _opt(10, min=0, doc="free AT: each epoch replays every minibatch `replays` times")
    batch_size: int = _opt(128, min=1)
    lr: float = _opt(0.1, min=0.0, min_exclusive=True)
    momentum: float = _opt(0.9, min=0.0, max=1.0)
    weight_decay: float = _opt(5e-4, min=0.0)
    nesterov: bool = _opt(False)
    schedule: str = _opt("multistep", choices=["constant", "multistep", "cosine", "cyclic"])
    milestones: List[int] = _opt(factory=list, doc="multistep: epochs at which lr *= gamma")
    gamma: float = _opt(0.1, min=0.0, min_exclusive=True)
    warmup_fraction: float = _opt(0.4, min=0.0, max=1.0,
                                  doc="cyclic: fraction of training spent rising to lr")
    eps: float = _opt(8 / 255, min=0.0, doc="L_inf radius of the training perturbation")
    step: Optional[float] = _opt(None, min=0.0,
                                 doc="perturbation step (default: eps for free, 1.25 eps for fgsm_rs)")
    replays: int = _opt(4, min=1, doc="free AT: m, replays of each minibatch")
    reset_delta: bool = _opt(False, doc="free AT: zero delta for each minibatch (ConvNorm code)")
    amp: str = _opt("auto", choices=["auto", "off", "bf16"],
                    doc="bf16 autocast (FFTs always fp32); auto: where measured faster (speed.AMP_AUTO)")
    val_pgd_steps: int = _opt(10, min=0, doc="PGD steps for the per-epoch validation check (0: off)")
    val_examples: int = _opt(256, min=0, doc="fixed validation subset size checked each epoch (0: off)")
    checkpoint_every: int = _opt(1, min=1, doc="epochs between checkpoints")
    stop_after_epochs: Optional[int] = _opt(None, min=0,
                                            doc="stop (resumably) after this many epochs in this process")


@dataclass
class EvalConfig:
    n_examples: Optional[int] = _opt(None, min=1, doc="test examples to evaluate (null: all)")
    batch_size: int = _opt(256, min=1)
    seed: int = _opt(0, min=0, max=MAX_SEED, doc="fixes which examples are evaluated and the attacks' randomness")
    checks: bool = _opt(True, doc="run the sanity checks (docs/evaluators.md) that produce flags")
    lipschitz: bool = _opt(True, doc="record per-layer spectral norms and bounds")
    alpha: float = _opt(0.01, min=0.0, max=1.0, min_exclusive=True,
                        doc="significance level of the paired sanity comparisons (docs/evaluators.md)")
    threat_model: Optional[Dict[str, Any]] = _opt(None, doc="{eps, norm} of the threat model for worst_case_acc "
                                                             "(null: the white-box evaluators' commonest eps)")
    evaluators: List[Dict[str, Any]] = _opt(factory=lambda: [{"type": "clean"}],
                                            doc="list of {type: ..., options...}")


_SWITCH = ["auto", "on", "off"]


@dataclass
class SpeedConfig:
    """Fast-path switches (robustbench_convnorm/speed.py): how a run computes,
    never what; not part of the run id. auto = on where measured faster and
    matching on this device type (docs/benchmarks.md)."""
    channels_last: str = _opt("auto", choices=_SWITCH, doc="channels_last memory format for model and inputs")
    cudnn_benchmark: str = _opt("auto", choices=_SWITCH, doc="cudnn.benchmark autotuning (CUDA only)")
    optimizer: str = _opt("auto", choices=["auto", "for_loop", "foreach", "fused"],
                          doc="SGD kernel: per-parameter loop, multi-tensor foreach, or fused")
    compile: str = _opt("auto", choices=_SWITCH,
                        doc="torch.compile the model (FFT layers stay eager; falls back to eager on failure)")
    convnorm_fast: str = _opt("auto", choices=_SWITCH, doc="ConvNorm's fast Fourier filtering")


@dataclass
class Config:
    data: DataConfig = _opt(factory=DataConfig)
    model: ModelConfig = _opt(factory=ModelConfig)
    normalizers: List[NormalizerEntry] = _opt(factory=lambda: [NormalizerEntry(name="vanilla")])
    batchnorm: bool = _opt(False, doc="BatchNorm after each conv")
    train: TrainConfig = _opt(factory=TrainConfig)
    eval: EvalConfig = _opt(factory=EvalConfig)
    seeds: List[int] = _opt(factory=lambda: [0])
    device: str = _opt("auto", choices=["auto", "cpu", "cuda"])
    speed: SpeedConfig = _opt(factory=SpeedConfig)
    output_dir: str = _opt("results/default")
    grid: Dict[str, List[Any]] = _opt(factory=dict,
                                      doc="extra grid axes: {dotted.key: [values]}")
    name: Optional[str] = _opt(None, doc="experiment name (for humans)")
    threads: Optional[int] = _opt(None, min=1, doc="torch CPU threads, set at each run's start (null: "
                                                   "torch's default); CPU results' last digits depend on it")
    launcher: Dict[str, Any] = _opt(factory=dict,
                                    doc="how the grid is launched (SLURM, local workers, DDP; launch/options.py)")


# ---------------------------------------------------------------- parsing

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


def config_from_dict(raw: Dict[str, Any], source: str = "<config>") -> Config:
    ctx = _Ctx(source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ctx.fail("", "the config must be a YAML mapping of sections")
    cfg = _build(Config, raw, "", ctx)
    _check_lists(cfg, ctx)
    _check_radii(cfg, ctx)
    return cfg


# ---------------------------------------------------------------- overrides

def set_path(raw: Dict[str, Any], dotted: str, value, source: str = "<config>") -> None:
    """Set ``a.b.c`` (list items by index: ``normalizers.0.options.T``) in a raw dict."""
    parts = dotted.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        key = int(part) if isinstance(node, list) and part.isdigit() else part
        try:
            nxt = node[key]
        except (KeyError, IndexError, TypeError):
            if isinstance(node, dict):
                nxt = node[key] = {}
            else:
                raise ConfigError(f"{source}: {'.'.join(parts[:i + 1])}: no such list item")
        if not isinstance(nxt, (dict, list)):
            nxt = node[key] = {}
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"{source}: {dotted}: no such list item")
        node[int(last)] = value
    else:
        node[last] = value


def parse_set(expr: str) -> Tuple[str, Any]:
    """'train.lr=0.01' -> ('train.lr', 0.01); the value is read as YAML."""
    if "=" not in expr:
        raise ConfigError(f"--set {expr!r}: expected key.path=value, e.g. --set train.epochs=2")
    key, text = expr.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {expr!r}: the key is empty")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {expr!r}: the value is not valid YAML ({err.__class__.__name__})")
    return key, value


def load_raw(path) -> Dict[str, Any]:
    """The YAML mapping of a config file; anything else is one ConfigError."""
    path = Path(path)
    example = "give a YAML config file such as configs/quickstart.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: no such config file; {example}")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a config file; {example}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err}); {example}") from None
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (binary data); {example}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        raise ConfigError(f"{path} is empty (or only comments), so it would run the default config; write the "
                          f"sections you mean (start from configs/quickstart.yaml)")
    return raw


def load_config(path, overrides: Sequence[str] = ()) -> Config:
    raw = load_raw(path)
    source = str(path)
    for expr in overrides:
        key, value = parse_set(expr)
        set_path(raw, key, value, source=f"{source} (--set {key})")
    return config_from_dict(raw, source=source)


def to_dict(obj) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else copy.deepcopy(obj)


# ---------------------------------------------------------------- grid

@dataclass
class RunSpec:
    """One run of a grid: a config whose ``normalizers`` and ``seeds`` hold one
    entry each, plus its stable id."""
    config: Config
    normalizer: NormalizerEntry
    seed: int
    run_id: str
    axes: Dict[str, Any] = field(default_factory=dict)
    grid_seeds: List[int] = field(default_factory=list)  # every seed of the grid, for tables

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output_dir) / "runs" / self.run_id


def run_identity(cfg: Config) -> Dict[str, Any]:
    """What the run id hashes; identity.py says what is left out and why."""
    return identity.run_identity(to_dict(cfg))


def make_run_id(cfg: Config) -> str:
    entry = cfg.normalizers[0]
    digest = identity.digest(run_identity(cfg))
    label = re.sub(r"[^A-Za-z0-9_.]+", "_", entry.label or entry.name)
    bn = "-bn" if cfg.batchnorm else ""
    return f"{cfg.data.source}-{cfg.model.arch}-{label}{bn}-{cfg.train.method}-s{cfg.seeds[0]}-{digest}"


def _resolved_normalizer_options(name: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Every option the normalizer is built with, defaults included (see
    Normalizer.resolved_options); an unknown name is left for preflight to name."""
    from .normalizers.registry import NORMALIZERS

    if name not in NORMALIZERS:
        return options
    return NORMALIZERS.get(name).resolved_options(options)


def expand_grid(cfg: Config, source: str = "<config>") -> List[RunSpec]:
    """normalizer x seed x every axis in ``grid``; per-normalizer overrides last."""
    base = to_dict(cfg)
    axes = list(cfg.grid.items())
    for key, values in axes:
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: grid.{key}: expected a non-empty list of values")
    specs: List[RunSpec] = []
    for entry, seed, combo in itertools.product(
            cfg.normalizers, cfg.seeds, itertools.product(*[v for _, v in axes])):
        raw = copy.deepcopy(base)
        raw["grid"] = {}
        raw["normalizers"] = [to_dict(entry)]
        raw["seeds"] = [seed]
        chosen = {}
        for (key, _), value in zip(axes, combo):
            set_path(raw, key, value, source=f"{source} (grid.{key})")
            chosen[key] = value
        for key, value in entry.overrides.items():
            set_path(raw, key, value, source=f"{source} (normalizer {entry.name} overrides.{key})")
        norm = raw["normalizers"][0]
        norm["options"] = _resolved_normalizer_options(norm["name"], norm["options"])
        run_cfg = config_from_dict(raw, source=source)
        run_cfg.grid = dict(cfg.grid)
        specs.append(RunSpec(run_cfg, run_cfg.normalizers[0], seed, make_run_id(run_cfg), chosen,
                             list(cfg.seeds)))
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{source}: two runs of the grid are identical; list each normalizer, "
                          f"seed and grid value once (or give entries distinct options/labels)")
    return specs
