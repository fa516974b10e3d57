"""The evaluation protocol of EVALUATION.md: one call runs a list of evaluators
on a model with fixed, recorded examples and the sanity checks.

    report = evaluate(model, x_test, y_test, eval_cfg, device="cuda")

``x_test``: uint8 tensor (N, C, H, W) (a float tensor in [0, 1] is accepted
too), ``y_test``: int64 (N,). ``eval_cfg``: a plain dict

    n_examples: int | None    examples for the clean and white-box evaluators (None = all)
    batch_size: int           (default 256)
    seed: int                 fixes the examples and every evaluator's randomness (default 0)
    checks: bool              run the sanity checks that produce flags (default true)
    evaluators: [ {type: ..., name?: ..., **options}, ... ]   (default [{type: clean}])

What it does, in order:

1. puts the model in eval mode (its previous mode is restored at the end);
2. draws one seeded permutation of the test set; the evaluated examples are
   its first ``n_examples`` (without replacement), recorded in
   ``report.indices`` and the ``index`` column of ``report.per_example``;
3. with ``checks``, probes the model (determinism, input gradients, logits);
4. runs every evaluator (a ``clean`` one is added first if none is listed).
   White-box and clean evaluators see the evaluated examples. Evaluators that
   attack correctly classified images (SimBA) get the first ``n_images``
   correctly classified examples in that same permutation, chosen per model
   (the permutation is walked past ``n_examples`` when needed). Each
   evaluator draws its randomness from its own generator, seeded from
   (seed, result name), so adding an evaluator changes no other's result.
   Every parameter and buffer is hashed before and after each evaluator; a
   change, or a module left in training mode, raises StateChangedError;
5. computes the metrics (accuracies in percent) and, with ``checks``, the
   comparisons between evaluators; each failed check is a flag.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustbench_convnorm.registry import RegistryError, closest

from . import checks
from .base import EvalOutcome, Evaluator, as_bool, as_int, batches
from .registry import get_evaluator

DEFAULT_CONFIG: Dict[str, Any] = {
    "n_examples": None,
    "batch_size": 256,
    "seed": 0,
    "checks": True,
    "evaluators": [{"type": "clean"}],
}
#: examples used by the model probes (determinism, gradients, logits)
PROBE_EXAMPLES = 64


@dataclass
class EvaluationReport:
    """metrics: {clean_acc, <name>_acc per white-box evaluator, worst_case_acc,
        <name>_success_rate, <name>_avg_queries, ... per SimBA evaluator}, in percent;
    flags: failed sanity checks (short strings, see attacks.checks);
    per_example: DataFrame, ``index`` (test-set index) then ``<name>_<column>`` per
        evaluator (nullable: NA where the evaluator did not see that example) and
        ``worst_case_correct``;
    details: {name: {kind, type, settings..., metrics..., curve?, seconds}};
    indices: the evaluated test-set indices (sorted);
    flag_notes: {flag: a sentence saying what was measured};
    protocol: the resolved settings (seed, n_examples, batch_size, checks, device, n_classes)."""

    metrics: Dict[str, Any]
    flags: List[str]
    per_example: pd.DataFrame
    details: Dict[str, Dict[str, Any]]
    indices: np.ndarray
    flag_notes: Dict[str, str] = field(default_factory=dict)
    protocol: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# ---------------------------------------------------------------------------

def resolve_config(eval_cfg: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Defaults filled in and values checked; unknown keys stop with one message."""
    cfg = dict(DEFAULT_CONFIG)
    for key, value in dict(eval_cfg or {}).items():
        if key not in DEFAULT_CONFIG:
            raise RegistryError(f"eval config has no key '{key}'{closest(key, DEFAULT_CONFIG)}; "
                                f"allowed: {', '.join(DEFAULT_CONFIG)}")
        cfg[key] = value
    if cfg["n_examples"] is not None:
        cfg["n_examples"] = as_int(cfg["n_examples"], "eval.n_examples")
    cfg["batch_size"] = as_int(cfg["batch_size"], "eval.batch_size")
    cfg["seed"] = as_int(cfg["seed"], "eval.seed", minimum=0)
    cfg["checks"] = as_bool(cfg["checks"], "eval.checks")
    if not isinstance(cfg["evaluators"], (list, tuple)):
        raise ValueError(f"eval.evaluators must be a list of {{type: ..., options}}, got {cfg['evaluators']!r}")
    return cfg


def build_evaluators(specs) -> List[Evaluator]:
    evaluators: List[Evaluator] = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            spec = {"type": spec}
        if not isinstance(spec, dict) or "type" not in spec:
            raise ValueError(f"eval.evaluators[{i}] must be a mapping with a 'type', got {spec!r}")
        options = dict(spec)
        evaluators.append(get_evaluator(options.pop("type"), **options))
    if not any(ev.kind == "clean" for ev in evaluators):
        evaluators.insert(0, get_evaluator("clean"))
    seen: Dict[str, Evaluator] = {}
    for ev in evaluators:
        if ev.name in seen:
            raise ValueError(f"two evaluators share the result name '{ev.name}' ({seen[ev.name]!r} and {ev!r}); "
                             "give one of them a 'name'")
        seen[ev.name] = ev
    return evaluators


def evaluator_seed(seed: int, name: str) -> int:
    return (int(seed) * 0x9E3779B1 + zlib.crc32(name.encode())) % (2 ** 63)


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _to_float(x_test: torch.Tensor, idx: np.ndarray, device, dtype, chunk: int) -> torch.Tensor:
    """x_test[idx] as float in [0, 1] on ``device``, converted there chunk by chunk."""
    out = torch.empty((len(idx),) + tuple(x_test.shape[1:]), dtype=dtype, device=device)
    idx_t = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    for start, stop in batches(len(idx), chunk):
        part = x_test[idx_t[start:stop].to(x_test.device)].to(device, non_blocking=True)
        out[start:stop] = part.to(dtype) / 255 if part.dtype == torch.uint8 else part.to(dtype)
    return out


def _pick_correct(model, x_test, y_test, order, n_wanted, device, dtype, batch_size):
    """The first n_wanted correctly classified examples along ``order`` (None = all)."""
    picked: List[np.ndarray] = []
    have, examined = 0, 0
    with torch.no_grad():
        for start, stop in batches(len(order), batch_size):
            idx = order[start:stop]
            xb = _to_float(x_test, idx, device, dtype, batch_size)
            yb = y_test[torch.as_tensor(idx).to(y_test.device)].to(device)
            ok = (model(xb).argmax(1) == yb).cpu().numpy()
            chosen = idx[ok]
            examined = stop
            if n_wanted is not None and have + len(chosen) >= n_wanted:
                chosen = chosen[:n_wanted - have]
                examined = start + int(np.flatnonzero(ok)[len(chosen) - 1]) + 1 if len(chosen) else start
            picked.append(chosen)
            have += len(chosen)
            if n_wanted is not None and have >= n_wanted:
                break
    return (np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)), examined


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _per_example_table(results: List[checks.Result], worst: np.ndarray,
                       worst_index: np.ndarray) -> pd.DataFrame:
    all_idx = np.unique(np.concatenate([r.index for r in results])) if results else np.zeros(0, np.int64)
    columns: Dict[str, Any] = {"index": all_idx.astype(np.int64)}

    def place(index, values):
        series = pd.Series(values, index=index)
        if values.dtype == bool:
            series = series.astype("boolean")
        elif np.issubdtype(values.dtype, np.integer):
            series = series.astype("Int64")
        return series.reindex(all_idx).array

    for r in results:
        for col, values in r.per_example.items():
            columns[f"{r.name}_{col}"] = place(r.index, values)
    columns["worst_case_correct"] = place(worst_index, worst)
    return pd.DataFrame(columns)


def evaluate(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, eval_cfg: Dict[str, Any], *,
             device, log: Callable[[str], Any] = print) -> EvaluationReport:
    """Run the evaluators of ``eval_cfg`` on ``model`` under the protocol above."""
    started = time.perf_counter()
    cfg = resolve_config(eval_cfg)
    evaluators = build_evaluators(cfg["evaluators"])
    device = torch.device(device)
    if x_test.dim() < 2 or len(x_test) != len(y_test):
        raise ValueError(f"x_test {tuple(x_test.shape)} and y_test {tuple(y_test.shape)} do not match")
    if x_test.dtype != torch.uint8 and not x_test.is_floating_point():
        raise ValueError(f"x_test must be uint8 (0..255) or float in [0, 1], got {x_test.dtype}")
    y_test = y_test.long()
    n_total = len(x_test)
    batch_size = cfg["batch_size"]

    generator = torch.Generator().manual_seed(cfg["seed"])
    order = torch.randperm(n_total, generator=generator).numpy()
    n_eval = n_total if cfg["n_examples"] is None else min(cfg["n_examples"], n_total)
    if cfg["n_examples"] is not None and cfg["n_examples"] > n_total:
        log(f"[eval] n_examples {cfg['n_examples']} > test set size {n_total}: using all {n_total}")
    eval_idx = np.sort(order[:n_eval])

    was_training = model.training
    model.to(device)
    model.eval()
    try:
        dtype = _model_dtype(model)
        x_eval = _to_float(x_test, eval_idx, device, dtype, max(batch_size, 1024))
        y_eval = y_test[torch.as_tensor(eval_idx).to(y_test.device)].to(device)
        with torch.no_grad():
            n_classes = int(model(x_eval[:1]).shape[1]) if n_eval else None
        notes: Dict[str, str] = {}

        def add_flags(pairs):
            for flag, note in pairs:
                if flag not in notes:
                    notes[flag] = note
                    log(f"[eval] FLAG {flag}: {note}")

        if cfg["checks"] and n_eval:
            before = checks.state_fingerprint(model)
            probe = min(PROBE_EXAMPLES, n_eval)
            add_flags(checks.probe_model(model, x_eval[:probe], y_eval[:probe]))
            checks.assert_state_unchanged(before, checks.state_fingerprint(model), "sanity probe")
            checks.assert_eval_mode(model, "sanity probe")

        results: List[checks.Result] = []
        details: Dict[str, Dict[str, Any]] = {}
        for ev in evaluators:
            name = ev.name
            extra: Dict[str, Any] = {}
            if ev.select_correct:
                idx, examined = _pick_correct(model, x_test, y_test, order, getattr(ev, "n_images", None),
                                              device, dtype, batch_size)
                want = getattr(ev, "n_images", None)
                if want is not None and len(idx) < want:
                    log(f"[eval] {name}: only {len(idx)} correctly classified test examples (wanted {want})")
                xs = _to_float(x_test, idx, device, dtype, max(batch_size, 1024))
                ys = y_test[torch.as_tensor(idx).to(y_test.device)].to(device)
                extra = {"n_examined": int(examined), "selection": "first correctly classified along the seeded order"}
            else:
                idx, xs, ys = eval_idx, x_eval, y_eval
            ev_seed = evaluator_seed(cfg["seed"], name)
            before = checks.state_fingerprint(model)
            t0 = time.perf_counter()
            outcome: EvalOutcome = ev.run(model, xs, ys, generator=torch.Generator().manual_seed(ev_seed),
                                          batch_size=batch_size)
            _sync(device)
            seconds = time.perf_counter() - t0
            checks.assert_state_unchanged(before, checks.state_fingerprint(model), name)
            checks.assert_eval_mode(model, name)
            info = dict(outcome.info)
            settings = {k: v for k, v in info.items()
                        if k not in ("curve", "loss_curve", "validity", "name", "kind", "type")}
            results.append(checks.Result(name=name, type=ev.type, kind=ev.kind, settings=settings,
                                         metrics=dict(outcome.metrics), index=np.asarray(idx, dtype=np.int64),
                                         per_example=outcome.per_example, info=info))
            details[name] = {"kind": ev.kind, "type": ev.type, **settings, **outcome.metrics,
                             **{k: info[k] for k in ("curve", "loss_curve", "validity") if k in info},
                             **extra, "seed": ev_seed, "seconds": round(seconds, 3)}
            shown = ", ".join(f"{k} {_fmt(outcome.metrics.get(k))}" for k in ev.headline)
            log(f"[eval] {name}: {shown} on {len(idx)} examples ({seconds:.1f} s)")

        metrics: Dict[str, Any] = {}
        for ev, r in zip(evaluators, results):
            for key in ev.headline:
                metrics[f"{r.name}_{key}"] = r.metrics.get(key)
        clean = next(r for r in results if r.kind == "clean")
        metrics["clean_acc"] = clean.metrics.get("acc")
        worst_index, worst = checks.worst_case_correct(results)
        metrics["worst_case_acc"] = float(100.0 * worst.mean()) if len(worst) else None

        if cfg["checks"]:
            share = None
            if n_eval:
                share = float(100.0 * np.bincount(y_eval.cpu().numpy()).max() / n_eval)
            add_flags(checks.comparison_flags(results, n_classes=n_classes, class_share=share))
        else:
            for r in results:
                add_flags(checks.validity_flags(r.name, r.info.get("validity", {})))

        table = _per_example_table(results, worst, worst_index)
        protocol = {"seed": cfg["seed"], "n_examples": int(n_eval), "n_test": int(n_total),
                    "batch_size": batch_size, "checks": cfg["checks"], "device": str(device),
                    "n_classes": n_classes, "selection": "first n_examples of torch.randperm(n_test, seed)"}
        seconds = time.perf_counter() - started
        return EvaluationReport(metrics=metrics, flags=list(notes), per_example=table, details=details,
                                indices=eval_idx, flag_notes=notes, protocol=protocol, seconds=seconds)
    finally:
        model.train(was_training)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
