"""The evaluation protocol: one call runs a list of evaluators on a model with
fixed, recorded examples and the sanity checks (docs/evaluators.md).

    report = evaluate(model, x_test, y_test, eval_cfg, device="cuda")

``x_test``: uint8 tensor (N, C, H, W) (a float tensor in [0, 1] is accepted
too), ``y_test``: int64 (N,). ``eval_cfg``: a plain dict

    n_examples: int | None    examples for the clean and white-box evaluators (None = all)
    batch_size: int           (default 256)
    seed: int                 fixes the examples and every evaluator's randomness (default 0)
    checks: bool              run the sanity checks that produce flags (default true)
    alpha: float              significance level of the paired comparisons (default 0.01)
    threat_model: {eps, norm} | None   the ball of worst_case_acc (None: inferred)
    evaluators: [ {type: ..., name?: ..., **options}, ... ]   (default [{type: clean}])

What it does, in order:

1. puts the model in eval mode (its previous mode is restored at the end);
2. draws one seeded permutation of the test set; the evaluated examples are
   its first ``n_examples`` (without replacement), recorded in
   ``report.indices`` and the ``index`` column of ``report.per_example``;
3. with ``checks``, probes the model (determinism, batch independence,
   input gradients, logits);
4. runs the clean evaluators (a ``clean`` one is added if none is listed),
   then the others. White-box evaluators see the evaluated examples.
   Evaluators that attack correctly classified images (SimBA) get the first
   ``n_images`` correctly classified examples in that same permutation,
   chosen per model (the permutation is walked past ``n_examples`` when
   needed). Each evaluator's randomness comes from its seed, derived from
   (seed, result name), so adding an evaluator changes no other's result;
   within an evaluator, from (its seed, batch index) and (its seed, example
   position). Every parameter, buffer and tensor attribute is hashed before
   and after each evaluator; a change, or a module left in training mode,
   raises StateChangedError;
5. computes the metrics (accuracies in percent) and, with ``checks``, the
   comparisons between evaluators; each failed check is a flag.

Sharding (data-parallel runs): with ``shard=(rank, world_size)`` and
``gather`` (see ``attacks._sharding``) each rank runs a contiguous block of
every evaluator's batches, the outcomes are gathered before the metrics and
checks, and every rank returns the same full report, with the same
per-example outcomes as one process.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustbench_convnorm.reliability import unreliable_flags

from . import checks
from ._certified_checks import certified_flags
from ._config import DEFAULT_CONFIG, build_evaluators, evaluator_seed, resolve_config
from ._progress import Progress
from ._selection import evaluation_order, pick_correct, to_float, to_labels
from ._sharding import Shard
from .base import EvalOutcome, Evaluator, attack_batches, combine, fraction_text, plan_batches

__all__ = ["DEFAULT_CONFIG", "PROBE_EXAMPLES", "EvaluationReport", "build_evaluators", "evaluate", "evaluator_seed",
           "resolve_config"]

#: examples used by the model probes (determinism, batch, gradients, logits)
PROBE_EXAMPLES = 64


@dataclass
class EvaluationReport:
    """metrics: {clean_acc, <name>_acc per white-box evaluator, worst_case_acc,
        worst_case_whitebox_acc, <name>_success_rate, <name>_avg_queries, ... per
        SimBA evaluator}, in percent (``<name>_saturated_frac`` is a fraction);
    flags: failed sanity checks (short strings, see attacks.checks);
    per_example: DataFrame, ``index`` (test-set index) then ``<name>_<column>`` per
        evaluator (nullable: NA where the evaluator did not see that example),
        ``worst_case_correct`` and ``worst_case_whitebox_correct``;
    details: {name: {kind, type, settings..., metrics..., curve?, seed, seconds, in_threat_model}};
    indices: the evaluated test-set indices (sorted);
    flag_notes: {flag: a sentence saying what was measured};
    protocol: the resolved settings (seed, n_examples, batch_size, checks, alpha, threat_model,
        device, n_classes, world_size) and ``unreliable_flags`` (the severe flags among ``flags``)."""

    metrics: Dict[str, Any]
    flags: List[str]
    per_example: pd.DataFrame
    details: Dict[str, Dict[str, Any]]
    indices: np.ndarray
    flag_notes: Dict[str, str] = field(default_factory=dict)
    protocol: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_share(ev: Evaluator, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ev_seed: int, batch_size: int,
               team: Shard, device: torch.device, log) -> Dict[str, Any]:
    """This rank's part of one evaluator (plain data, for the gather)."""
    before = checks.state_fingerprint(model)
    t0 = time.perf_counter()
    if ev.batchwise:
        # prepare() on every rank: finish() may need what it learns
        base, spans = plan_batches(ev, model, x, y, torch.Generator().manual_seed(ev_seed), batch_size)
        mine = team.mine(len(spans))
        with Progress(len(mine), ev.name, log) as bar:
            payload: Dict[str, Any] = {"parts": attack_batches(ev, model, x, y, base, spans, mine, bar.update)}
    else:
        # an evaluator with run() only cannot be split: rank 0 runs it whole
        whole = ev.run(model, x, y, generator=torch.Generator().manual_seed(ev_seed), batch_size=batch_size) \
            if team.rank == 0 else None
        payload = {"whole": whole}
    _sync(device)
    payload["seconds"] = time.perf_counter() - t0
    checks.assert_state_unchanged(before, checks.state_fingerprint(model), ev.name)
    checks.assert_eval_mode(model, ev.name)
    return payload


def _merge(ev: Evaluator, shares: Sequence[Dict[str, Any]]) -> Tuple[EvalOutcome, float]:
    """One evaluator's outcome from every rank's share, and its wall time (the slowest rank's)."""
    seconds = max(s["seconds"] for s in shares)
    if "whole" in shares[0]:
        return shares[0]["whole"], seconds
    parts: Dict[int, Any] = {}
    for s in shares:
        parts.update(s["parts"])
    return combine(ev, [parts[b] for b in sorted(parts)]), seconds


def _per_example_table(results: List[checks.Result], worst: Dict[str, Tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
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
    for col, (index, values) in worst.items():
        columns[col] = place(index, values)
    return pd.DataFrame(columns)


def evaluate(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, eval_cfg: Dict[str, Any], *,
             device, log: Callable[[str], Any] = print, shard: Optional[Sequence[int]] = None,
             gather: Optional[Callable[[Any], List[Any]]] = None) -> EvaluationReport:
    """Run the evaluators of ``eval_cfg`` on ``model`` under the protocol above.

    ``shard=(rank, world_size)`` and ``gather`` split the batches between
    processes (default: everything here); ``gather(obj)`` all-gathers a
    picklable object and returns every rank's object in rank order."""
    started = time.perf_counter()
    cfg = resolve_config(eval_cfg)
    evaluators = build_evaluators(cfg["evaluators"])
    team = Shard(shard, gather)
    device = torch.device(device)
    if x_test.dim() < 2 or len(x_test) != len(y_test):
        raise ValueError(f"x_test {tuple(x_test.shape)} and y_test {tuple(y_test.shape)} do not match")
    if x_test.dtype != torch.uint8 and not x_test.is_floating_point():
        raise ValueError(f"x_test must be uint8 (0..255) or float in [0, 1], got {x_test.dtype}")
    y_test = y_test.long()
    n_total = len(x_test)
    batch_size = cfg["batch_size"]

    order, eval_idx = evaluation_order(n_total, cfg["n_examples"], cfg["seed"])
    n_eval = len(eval_idx)
    if cfg["n_examples"] is not None and cfg["n_examples"] > n_total:
        log(f"[eval] n_examples {cfg['n_examples']} > test set size {n_total}: using all {n_total}")

    was_training = model.training
    model.to(device)
    model.eval()
    try:
        dtype = _model_dtype(model)
        chunk = max(batch_size, 1024)
        x_eval = to_float(x_test, eval_idx, device, dtype, chunk)
        y_eval = to_labels(y_test, eval_idx, device)
        with torch.no_grad():
            n_classes = int(model(x_eval[:1]).shape[1]) if n_eval else None
        notes: Dict[str, str] = {}

        def add_flags(pairs):
            for flag, note in pairs:
                if flag not in notes:
                    notes[flag] = note
                    log(f"[eval] FLAG {flag}: {note}")

        seeds = {ev.name: evaluator_seed(cfg["seed"], ev.name) for ev in evaluators}
        first = [ev for ev in evaluators if ev.kind == "clean"]
        rest = [ev for ev in evaluators if ev.kind != "clean"]
        outcomes: Dict[str, Tuple[EvalOutcome, float]] = {}

        def log_outcome(ev):
            outcome, seconds = outcomes[ev.name]
            shown = ", ".join(f"{k} {_fmt(outcome.metrics.get(k))}" for k in ev.headline)
            log(f"[eval] {ev.name}: {shown} on {len(outcome.per_example['correct'])} examples ({seconds:.1f} s)")

        # 1. the probes and the clean evaluators
        def probe_and_clean():
            flags: List[Tuple[str, str]] = []
            if cfg["checks"] and n_eval:
                before = checks.state_fingerprint(model)
                probe = min(PROBE_EXAMPLES, n_eval)
                flags = checks.probe_model(model, x_eval[:probe], y_eval[:probe])
                checks.assert_state_unchanged(before, checks.state_fingerprint(model), "sanity probe")
                checks.assert_eval_mode(model, "sanity probe")
            shares = {ev.name: _run_share(ev, model, x_eval, y_eval, seeds[ev.name], batch_size, team, device, log)
                      for ev in first}
            return flags, shares

        gathered = team.run_and_gather(probe_and_clean)
        for flags, _ in gathered:      # every rank's flags; add_flags keeps each flag's first note
            add_flags(flags)
        for ev in first:
            outcomes[ev.name] = _merge(ev, [shares[ev.name] for _, shares in gathered])
            log_outcome(ev)

        # 2. the examples of the evaluators that attack correctly classified ones
        inputs: Dict[str, Tuple[np.ndarray, torch.Tensor, torch.Tensor]] = {}
        extra: Dict[str, Dict[str, Any]] = {}
        choosers = [ev for ev in rest if ev.select_correct]
        if choosers:
            head = outcomes[first[0].name][0].per_example["correct"]
            head_correct = np.asarray(head, dtype=bool)[np.searchsorted(eval_idx, order[:n_eval])]
            wants = [getattr(ev, "n_images", None) for ev in choosers]
            wanted = None if any(w is None for w in wants) else max(wants)

            def predict(idx):
                xb = to_float(x_test, idx, device, dtype, batch_size)
                yb = to_labels(y_test, idx, device)
                with torch.no_grad():
                    return (model(xb).argmax(1) == yb).cpu().numpy()

            picked, positions, walked = pick_correct(wanted, order, n_eval, head_correct, predict, batch_size, team)
            # converted once; each evaluator gets a leading slice (a view)
            x_picked, y_picked = to_float(x_test, picked, device, dtype, chunk), to_labels(y_test, picked, device)
            for ev, want in zip(choosers, wants):
                m = len(picked) if want is None else min(want, len(picked))
                if want is not None and m < want:
                    log(f"[eval] {ev.name}: only {m} correctly classified test examples (wanted {want})")
                inputs[ev.name] = (picked[:m], x_picked[:m], y_picked[:m])
                extra[ev.name] = {"n_examined": int(positions[m - 1]) + 1 if (want is not None and m == want) else
                                  int(walked),
                                  "selection": "first correctly classified along the seeded order"}

        # 3. every other evaluator
        def attack_rest():
            shares = {}
            for ev in rest:
                _, xs, ys = inputs.get(ev.name, (None, x_eval, y_eval))
                shares[ev.name] = share = _run_share(ev, model, xs, ys, seeds[ev.name], batch_size, team, device, log)
                if team.world == 1:     # alone: the outcome is complete, say it now
                    outcomes[ev.name] = _merge(ev, [share])
                    log_outcome(ev)
            return shares, time.perf_counter() - started

        gathered_rest = team.run_and_gather(attack_rest)
        for ev in rest:
            if team.world > 1:
                outcomes[ev.name] = _merge(ev, [shares[ev.name] for shares, _ in gathered_rest])
                log_outcome(ev)
        seconds_total = max(elapsed for _, elapsed in gathered_rest)

        # 4. metrics, checks, the per-example table
        results: List[checks.Result] = []
        details: Dict[str, Dict[str, Any]] = {}
        for ev in evaluators:
            outcome, seconds = outcomes[ev.name]
            idx = inputs[ev.name][0] if ev.name in inputs else eval_idx
            info = dict(outcome.info)
            settings = {k: v for k, v in info.items()
                        if k not in ("curve", "loss_curve", "validity", "name", "kind", "type")}
            results.append(checks.Result(name=ev.name, type=ev.type, kind=ev.kind, settings=settings,
                                         metrics=dict(outcome.metrics), index=np.asarray(idx, dtype=np.int64),
                                         per_example=outcome.per_example, info=info))
            details[ev.name] = {"kind": ev.kind, "type": ev.type, **settings, **outcome.metrics,
                                **{k: info[k] for k in ("curve", "loss_curve", "validity") if k in info},
                                **extra.get(ev.name, {}), "seed": seeds[ev.name], "seconds": round(seconds, 3)}

        threat = cfg["threat_model"] or checks.infer_threat_model(results)
        for r in results:
            if r.kind != "clean":
                details[r.name]["in_threat_model"] = checks.in_threat_model(r, threat)
        metrics: Dict[str, Any] = {}
        for ev, r in zip(evaluators, results):
            for key in ev.headline:
                metrics[f"{r.name}_{key}"] = r.metrics.get(key)
        clean = next(r for r in results if r.kind == "clean")
        metrics["clean_acc"] = clean.metrics.get("acc")
        worst = {"worst_case_correct": checks.worst_case_correct(results, threat),
                 "worst_case_whitebox_correct": checks.worst_case_correct(results, threat, kinds=("whitebox",))}
        for col, (_, survived) in worst.items():
            metrics[col.replace("_correct", "_acc")] = float(100.0 * survived.mean()) if len(survived) else None

        if cfg["checks"]:
            share = float(100.0 * np.bincount(y_eval.cpu().numpy()).max() / n_eval) if n_eval else None
            add_flags(checks.comparison_flags(results, n_classes=n_classes, class_share=share, alpha=cfg["alpha"]))
            add_flags(certified_flags(results))   # certificates against the attacks' distances
        else:
            for r in results:
                add_flags(checks.outcome_flags(r))

        # severe flags (robustbench_convnorm/reliability.py): the leaderboard will not rank this model
        severe = unreliable_flags(notes)
        if severe:
            log(f"[eval] UNRELIABLE: {', '.join(severe)} failed; the leaderboard lists this model apart, unranked")

        protocol = {"seed": cfg["seed"], "n_examples": int(n_eval), "n_test": int(n_total),
                    "batch_size": batch_size, "checks": cfg["checks"], "alpha": cfg["alpha"],
                    "threat_model": None if threat is None else {
                        "norm": threat[0], "eps": threat[1], "eps_text": fraction_text(threat[1]),
                        "source": "config" if cfg["threat_model"] else "inferred from the white-box evaluators"},
                    "device": str(device), "n_classes": n_classes, "world_size": team.world,
                    "selection": "first n_examples of torch.randperm(n_test, seed)", "unreliable_flags": severe}
        return EvaluationReport(metrics=metrics, flags=list(notes), per_example=_per_example_table(results, worst),
                                details=details, indices=eval_idx, flag_notes=notes, protocol=protocol,
                                seconds=seconds_total)
    finally:
        model.train(was_training)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
