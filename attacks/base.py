"""The evaluator interface shared by every attack, and the helpers they share.

An evaluator is built from keyword options (validated against ``__init__``'s
signature by ``get_evaluator``), has a stable result ``name`` derived from
those options, and measures a model on given inputs with ``run``::

    outcome = evaluator.run(model, x, y, generator=g, batch_size=256)

``x`` is float in [0, 1] on the model's device, ``y`` int64 on the same
device. ``run`` returns an :class:`EvalOutcome`: per-example arrays (always
``correct``; ``queries``, ``linf``, ``l2`` where they apply), the evaluator's
metrics, and ``info`` holding its full settings.

Result names (see docs/evaluators.md): a base derived from the type and the
option that identifies the attack (``clean``, ``fgsm``, ``pgd10``, ``simba``,
``simba_dct``, ``autoattack``, ``noise``), then ``_<option><value>`` for
each naming option whose value differs from its default, in the evaluator's
option order. Option names lose their underscores; a number with at most three
significant digits is written in decimal with ``p`` for the point (``eps0p5``,
``step0p025``); other numbers in pixel units (eps, PGD step, SimBA's
linf_bound) that are a whole number of 255ths are written in 255ths (``eps16`` =
16/255); booleans as 0/1; strings as written.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

KINDS = ("clean", "whitebox", "blackbox")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass
class EvalOutcome:
    """What one evaluator measured.

    per_example: column -> 1-D numpy array, one entry per input example
        (``correct`` (bool) always; ``queries`` (int64), ``linf``/``l2``
        (float64) where they apply).
    metrics: the evaluator's own numbers (accuracies and rates in percent).
    info: the full settings (type, name, kind, eps, step, ...) plus any
        extra record (``curve`` for SimBA, ``loss_curve`` for PGD,
        ``validity`` counts of invalid adversarial inputs).
    """

    per_example: Dict[str, np.ndarray]
    metrics: Dict[str, Any]
    info: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if "correct" not in self.per_example:
            raise ValueError("EvalOutcome.per_example needs a 'correct' column")
        lengths = {k: len(v) for k, v in self.per_example.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"EvalOutcome.per_example columns differ in length: {lengths}")
        for key, value in self.per_example.items():
            if not isinstance(value, np.ndarray) or value.ndim != 1:
                raise ValueError(f"EvalOutcome.per_example['{key}'] must be a 1-D numpy array")


class Evaluator:
    """Base class of every evaluator.

    Subclasses set ``kind``, take their options as keyword-only arguments of
    ``__init__`` (with ``name=None`` among them), and implement ``run`` and
    ``name_options``. ``headline`` lists the metric keys that the protocol
    publishes as ``<name>_<key>`` in the run's metrics; the rest go to the
    run's per-evaluator details.
    """

    kind: str = "whitebox"
    registered_name: str = "?"
    #: metric keys published in the run's top-level metrics as <name>_<key>
    headline: Tuple[str, ...] = ("acc",)
    #: True for evaluators that attack correctly classified examples only
    #: (the protocol then picks them per model; SimBA).
    select_correct: bool = False
    #: L_inf / L2 radius of the threat model, None when unbounded
    eps: Optional[float] = None
    norm: str = "Linf"

    def __init__(self, *, name: Optional[str] = None):
        if self.kind not in KINDS:
            raise ValueError(f"{type(self).__name__}.kind must be one of {KINDS}, got {self.kind!r}")
        if name is not None and not _NAME_RE.match(str(name)):
            raise ValueError(
                f"evaluator name {name!r} must start with a letter and hold only letters, "
                "digits and '_' (it becomes a column and metric prefix)")
        self._given_name = name

    # -- naming ---------------------------------------------------------
    @property
    def type(self) -> str:
        return self.registered_name

    def base_name(self) -> str:
        return self.registered_name

    def name_options(self) -> List[Tuple[str, Any, Any, str]]:
        """(option, value, default, unit) for options that enter the name;
        unit is "pixel" (written in 255ths when whole) or "" (plain)."""
        return []

    @property
    def name(self) -> str:
        if self._given_name is not None:
            return self._given_name
        return self.base_name() + name_suffix(self.name_options())

    # -- record ---------------------------------------------------------
    def settings(self) -> Dict[str, Any]:
        """Every option that defines the result (plain data for the record)."""
        return {}

    def describe(self) -> Dict[str, Any]:
        return {"type": self.type, "name": self.name, "kind": self.kind, **self.settings()}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
            generator: torch.Generator, batch_size: int) -> EvalOutcome:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}(name={self.name!r}, {opts})"


# ---------------------------------------------------------------------------
# option parsing and naming helpers

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


# ---------------------------------------------------------------------------
# randomness: every evaluator draws from the generator it is given

def draw_seed(generator: torch.Generator) -> int:
    """A 62-bit seed drawn from ``generator`` (a CPU generator)."""
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator).item())


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device):
    """Run library code that uses torch's global RNG (torchattacks' random
    starts) reproducibly, and leave the caller's global RNG state untouched:
    the CPU generator and, on CUDA, the generator of ``device`` are seeded
    inside ``torch.random.fork_rng``, which restores both afterwards."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]):
            torch.random.default_generator.manual_seed(seed)
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield


def batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-example (L_inf, L2) of x_adv - x, in float64 on the same device."""
    delta = (x_adv.detach().double() - x.detach().double()).flatten(1)
    return delta.abs().amax(1), delta.norm(dim=1)


def percent(mask: np.ndarray) -> float:
    return float(100.0 * np.mean(mask)) if len(mask) else float("nan")


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return fallback
