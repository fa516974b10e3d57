"""The evaluator interface shared by every attack, and the helpers they share.

An evaluator is built from keyword options (validated against ``__init__``'s
signature by ``get_evaluator``), has a stable result ``name`` derived from
those options, and measures a model on given inputs with ``run``::

    outcome = evaluator.run(model, x, y, generator=g, batch_size=256)

``x`` is float in [0, 1] on the model's device, ``y`` int64 on the same
device. ``run`` returns an :class:`EvalOutcome`: per-example arrays (always
``correct``; ``queries``, ``linf``, ``l2`` where they apply), the evaluator's
metrics, and ``info`` holding its full settings.

Batches. An evaluator works batch by batch (``attack_batch``) and combines
the batches' outcomes afterwards (``finish``), so that the protocol can give
different batches to different processes and gather them. Every batch's
randomness comes from a generator seeded from (evaluator seed, batch index)
and every example's from (evaluator seed, example position), never from how
many batches ran before in this process: one process and several give the
same per-example outcomes.

Result names (see docs/evaluators.md): a base derived from the type and the
option that identifies the attack (``clean``, ``fgsm``, ``pgd10``, ``simba``,
``simba_dct``, ``autoattack``, ``autoattack_fast``, ``noise``), then
``_<option><value>`` for each naming option whose value differs from its
default, in the evaluator's option order. Option names lose their
underscores; a number with at most three significant digits is written in
decimal with ``p`` for the point (``eps0p5``, ``step0p025``); other numbers
in pixel units (eps, PGD step, SimBA's linf_bound) that are a whole number of
255ths are written in 255ths (``eps16`` = 16/255); booleans as 0/1; strings as
written.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ._options import (as_bool, as_choice, as_float, as_int, format_value, fraction_text,  # noqa: F401
                       name_suffix)

__all__ = [
    "KINDS", "BatchOutcome", "EvalOutcome", "Evaluator", "add_totals", "as_bool", "as_choice", "as_float", "as_int",
    "attack_batches", "batch_generator", "batches", "check_columns", "combine", "draw_seed", "example_seeds",
    "format_value", "fraction_text", "mix_seed", "name_suffix", "percent", "perturbation_norms",
    "plan_batches", "seeded_global_rng",
]

KINDS = ("clean", "whitebox", "blackbox", "certified")  # certified: no attack, a proof (attacks/certified.py)
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
        check_columns(self.per_example, "EvalOutcome")


@dataclass
class BatchOutcome:
    """What an evaluator measured on one batch: per-example columns (numpy)
    and totals that add up over batches (numbers, lists of numbers added
    element by element, or dicts of those). Plain data, so that it can be
    pickled and gathered from other processes."""

    per_example: Dict[str, np.ndarray]
    totals: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_columns(self.per_example, "BatchOutcome")


def check_columns(per_example: Dict[str, np.ndarray], what: str) -> None:
    if "correct" not in per_example:
        raise ValueError(f"{what}.per_example needs a 'correct' column")
    lengths = {k: len(v) for k, v in per_example.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{what}.per_example columns differ in length: {lengths}")
    for key, value in per_example.items():
        if not isinstance(value, np.ndarray) or value.ndim != 1:
            raise ValueError(f"{what}.per_example['{key}'] must be a 1-D numpy array")


class Evaluator:
    """Base class of every evaluator.

    Subclasses set ``kind``, take their options as keyword-only arguments of
    ``__init__`` (with ``name=None`` among them), implement ``name_options``
    and either

    * ``attack_batch`` (one batch; optionally ``prepare``, ``finish`` and
      ``batch_size_for``): the protocol can then split the batches between
      processes, and ``run`` comes for free; or
    * ``run`` alone (the whole input at once): such an evaluator runs in one
      process only (rank 0 under sharding).

    ``headline`` lists the metric keys that the protocol publishes as
    ``<name>_<key>`` in the run's metrics; the rest go to the run's
    per-evaluator details.
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

    # -- measuring --------------------------------------------------------
    @property
    def batchwise(self) -> bool:
        """True when the evaluator implements ``attack_batch`` (and can be sharded)."""
        return type(self).attack_batch is not Evaluator.attack_batch

    def batch_size_for(self, batch_size: int) -> int:
        """The batch this evaluator works in, given the protocol's."""
        return batch_size

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """Called once with every input before the batches (e.g. to infer n_classes)."""

    def attack_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     generator: torch.Generator, example_seeds: np.ndarray) -> BatchOutcome:
        """Measure one batch. ``generator`` is this batch's, seeded from
        (evaluator seed, batch index); ``example_seeds`` holds one seed per
        example, from (evaluator seed, example position), for randomness that
        must not depend on how the examples are batched."""
        raise NotImplementedError

    def empty_columns(self) -> Dict[str, np.ndarray]:
        """The per-example columns of an evaluation on no example."""
        return {"correct": np.zeros(0, dtype=bool)}

    def finish(self, per_example: Dict[str, np.ndarray], totals: Dict[str, Any]) -> EvalOutcome:
        """The outcome from every batch's columns (concatenated in example
        order) and totals (added up)."""
        correct = per_example["correct"]
        return EvalOutcome(per_example=per_example, metrics={"acc": percent(correct), "n": int(len(correct))},
                           info=self.describe())

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
            generator: torch.Generator, batch_size: int) -> EvalOutcome:
        """Every batch in this process; the protocol's result for the same
        seed (``generator`` seeded with the evaluator seed) and batch size."""
        if not self.batchwise:
            raise NotImplementedError(f"{type(self).__name__} implements neither run nor attack_batch")
        base, spans = plan_batches(self, model, x, y, generator, batch_size)
        parts = attack_batches(self, model, x, y, base, spans, range(len(spans)))
        return combine(self, [parts[b] for b in range(len(spans))])

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}(name={self.name!r}, {opts})"


# ---------------------------------------------------------------------------
# batches and their seeds

def mix_seed(base: int, index: int) -> int:
    """A 63-bit seed from (base, index) (splitmix64): nearby indices give
    unrelated seeds, and the result depends on nothing else."""
    z = (int(base) + 0x9E3779B97F4A7C15 * (int(index) + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


def batch_generator(base: int, batch_index: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(base, 2 * batch_index))


def example_seeds(base: int, start: int, stop: int) -> np.ndarray:
    # odd indices: never the same seed as a batch's generator
    return np.array([mix_seed(base, 2 * i + 1) for i in range(start, stop)], dtype=np.int64)


def plan_batches(ev: Evaluator, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                 batch_size: int) -> Tuple[int, List[Tuple[int, int]]]:
    """(base seed, batch spans) of a batchwise evaluator: the seed drawn from
    ``generator`` (seeded with the evaluator seed), then ``ev.prepare`` with
    every input, then the spans at ``ev.batch_size_for(batch_size)``."""
    base = draw_seed(generator)
    ev.prepare(model, x, y)
    return base, list(batches(len(x), ev.batch_size_for(batch_size)))


def attack_batches(ev: Evaluator, model: nn.Module, x: torch.Tensor, y: torch.Tensor, base: int,
                   spans: Sequence[Tuple[int, int]], batch_ids: Sequence[int],
                   on_batch: Optional[Callable[[], Any]] = None) -> Dict[int, BatchOutcome]:
    """``ev.attack_batch`` on the batches ``batch_ids`` of ``spans``, each with
    the randomness of its index; ``on_batch`` is called after each."""
    out: Dict[int, BatchOutcome] = {}
    for b in batch_ids:
        start, stop = spans[b]
        out[b] = ev.attack_batch(model, x[start:stop], y[start:stop], generator=batch_generator(base, b),
                                 example_seeds=example_seeds(base, start, stop))
        if on_batch is not None:
            on_batch()
    return out


def add_totals(a: Any, b: Any) -> Any:
    """a + b for totals: numbers add, dicts add per key, lists element by
    element. None where the sum is meaningless: lists of different lengths,
    and a dict key that only one side has (a total that only some batches
    reported would otherwise be a partial sum)."""
    if a is None or b is None:
        return None
    if isinstance(a, dict):
        return {k: add_totals(a[k], b[k]) if k in a and k in b else None
                for k in list(a) + [k for k in b if k not in a]}
    if isinstance(a, (list, tuple)):
        return [u + v for u, v in zip(a, b)] if len(a) == len(b) else None
    return a + b


def combine(ev: Evaluator, parts: Sequence[BatchOutcome]) -> EvalOutcome:
    """``ev.finish`` of batch outcomes given in example order."""
    if parts:
        columns = {k: np.concatenate([p.per_example[k] for p in parts]) for k in parts[0].per_example}
        totals: Dict[str, Any] = dict(parts[0].totals)
        for p in parts[1:]:
            totals = add_totals(totals, p.totals)
    else:
        columns, totals = ev.empty_columns(), {}
    return ev.finish(columns, totals)


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
