"""One evaluation path for every model in a record: the trained runs (after
training, or --eval-only) and outside models (``robustbench_convnorm.evaluate``)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pandas as pd

from .. import distributed
from ..config import Config, to_dict

__all__ = ["evaluate_into", "kept_evaluations", "merge_kept"]


def evaluate_into(record: Dict, model, data, cfg: Config, device, log: Callable[[str], object], run_dir: Path, *,
                  title: str):
    """Attacks, sanity checks and Lipschitz diagnostics of ``model`` (inputs in
    [0, 1]) on ``data``'s test split, as ``cfg.eval`` says, into the record;
    returns the per-example outcomes (a DataFrame) for per_example.csv.
    ``title`` heads the layer-norm plot."""
    from ..attacks.protocol import evaluate

    model.eval()
    distributed.sync_model(model)  # DDP: every rank evaluates rank 0's model
    t0 = time.perf_counter()
    eval_cfg = to_dict(cfg.eval)
    eval_cfg.pop("lipschitz")  # ours, not the attack protocol's
    report = evaluate(model, data.test_x.to(device), data.test_y.to(device), eval_cfg, device=device, log=log,
                      **distributed.evaluate_kwargs(evaluate))  # DDP: sharded and gathered
    record["metrics"].update(report.metrics)
    record["flags"] = sorted(set(record["flags"]) | set(report.flags))
    record["evaluations"] = report.details
    record["timings"]["eval_seconds"] = time.perf_counter() - t0
    if cfg.eval.lipschitz and distributed.is_writer():  # DDP: rank 0 alone (it writes a plot)
        from ..lipschitz import model_report, plot_layer_norms

        t0 = time.perf_counter()
        try:
            lip = model_report(model, tuple(data.image_shape))
            record["lipschitz"] = lip
            for warning in lip.get("warnings") or []:
                log(f"  lipschitz: {warning}")
            plot_layer_norms(lip, Path(run_dir) / "layer_norms.png", title=title)
            for key in ("lip_product_log10", "mean_layer_spectral_norm", "lip_network_log10"):
                if key in lip:
                    record["metrics"][key] = lip[key]
        except Exception as err:  # diagnostics must not sink a trained run
            record["flags"].append(f"lipschitz-error:{err.__class__.__name__}")
            log(f"  lipschitz diagnostics failed: {err}")
        record["timings"]["lipschitz_seconds"] = time.perf_counter() - t0
    shown = ", ".join(f"{k} {v:.2f}" for k, v in record["metrics"].items() if isinstance(v, float))
    log(f"  {shown}" + (f"  flags: {', '.join(record['flags'])}" if record["flags"] else ""))
    return report.per_example


#: eval settings that fix which test examples are evaluated: kept and new
#: outcomes share examples only when these agree
_SAME_EXAMPLES = ("n_examples", "seed")
#: metrics of the whole evaluation, recomputed (worst case) or the run's own (Lipschitz)
_WHOLE_METRICS = ("clean_acc", "worst_case_acc", "worst_case_whitebox_acc")
WORST_COLUMNS = ("worst_case_correct", "worst_case_whitebox_correct")


def _protocol_config(cfg: Config) -> Dict:
    """cfg.eval as the attack protocol resolves it (attacks/_config.py)."""
    from ..attacks.protocol import resolve_config

    eval_cfg = to_dict(cfg.eval)
    eval_cfg.pop("lipschitz")
    return resolve_config(eval_cfg)


def _owner(key: str, names) -> Optional[str]:
    """The evaluator a ``<name>_<what>`` key belongs to (the longest name that fits)."""
    fits = [n for n in names if key.startswith(f"{n}_")]
    return max(fits, key=len) if fits else None


def _flag_names(flag: str) -> List[str]:
    """Evaluators a flag speaks of: ``a:what`` or ``a>b`` (attacks/checks.py)."""
    return flag.split(":", 1)[0].split(">")


def _result(name: str, detail: Dict, table: pd.DataFrame):
    """One evaluator's outcome as the worst case reads it, from its per_example.csv columns."""
    from ..attacks import checks

    correct = table[f"{name}_correct"]
    seen = correct.notna().to_numpy()
    per_example = {"correct": correct[seen].astype(bool).to_numpy()}
    for size in ("linf", "l2"):
        if f"{name}_{size}" in table:
            per_example[size] = table[f"{name}_{size}"][seen].astype(float).to_numpy()
    settings = {k: detail[k] for k in ("eps", "norm") if k in detail}
    return checks.Result(name=name, type=str(detail.get("type")), kind=str(detail.get("kind")), settings=settings,
                         metrics={}, index=table["index"][seen].astype(np.int64).to_numpy(), per_example=per_example)


def kept_evaluations(old: Optional[Dict], cfg: Config) -> List[str]:
    """Evaluators of ``old`` (a finished record) that ``cfg.eval`` does not run
    again, and that --eval-only therefore keeps; raises ValueError when they
    cannot be kept (other examples evaluated, or their outcomes are missing)."""
    if not old or old.get("status") != "finished":
        return []
    from ..attacks.protocol import build_evaluators

    new = [ev.name for ev in build_evaluators(_protocol_config(cfg)["evaluators"])]
    kept = [name for name in old.get("evaluations", {}) if name not in new]
    if not kept:
        return []
    old_eval = (old.get("config") or {}).get("eval") or {}
    mine = to_dict(cfg.eval)
    differ = [k for k in _SAME_EXAMPLES if old_eval.get(k, mine[k]) != mine[k]]
    if differ:
        raise ValueError(f"the kept evaluations ({', '.join(kept)}) were made with eval."
                         f"{', eval.'.join(f'{k}={old_eval.get(k)!r}' for k in differ)}, this evaluation uses "
                         f"{', '.join(f'{k}={mine[k]!r}' for k in differ)}: their worst case would mix other "
                         f"examples. Re-run every evaluator (--replace-evaluations) or use the same settings")
    return kept


def merge_kept(record: Dict, per_example: pd.DataFrame, old: Dict, old_table: pd.DataFrame, kept: List[str],
               cfg: Config) -> pd.DataFrame:
    """Fold the kept evaluators of ``old`` (record and per_example.csv) into the
    new ``record`` and per-example table: their details, headline metrics,
    own flags and per-example columns are carried over, and the worst case is
    recomputed per example over the union (attacks.checks.worst_case_correct),
    so the row's worst case covers every evaluator it lists. Returns the table."""
    from ..attacks import checks

    missing = [n for n in kept if f"{n}_correct" not in old_table.columns]
    if missing:
        raise ValueError(f"per_example.csv has no outcomes of the kept evaluator(s) {', '.join(missing)}; "
                         f"re-run every evaluator (--replace-evaluations)")
    old_names = list(old.get("evaluations", {}))
    table = per_example.drop(columns=[c for c in WORST_COLUMNS if c in per_example.columns])
    carried = old_table[["index"] + [c for c in old_table.columns if _owner(c, old_names) in kept]]
    table = table.merge(carried, on="index", how="outer").sort_values("index", ignore_index=True)
    details = {**{n: old["evaluations"][n] for n in kept}, **record["evaluations"]}
    results = [_result(name, detail, table) for name, detail in details.items()]
    threat = _protocol_config(cfg)["threat_model"] or checks.infer_threat_model(results)
    for r in results:
        if r.kind != "clean":
            details[r.name]["in_threat_model"] = checks.in_threat_model(r, threat)
    metrics = dict(record["metrics"])
    for key, value in (old.get("metrics") or {}).items():
        if _owner(key, old_names) in kept or (key == "clean_acc" and any(r.kind == "clean" and r.name in kept
                                                                         for r in results)):
            metrics[key] = value
    for col, kinds in zip(WORST_COLUMNS, (("whitebox", "blackbox"), ("whitebox",))):
        index, survived = checks.worst_case_correct(results, threat, kinds=kinds)
        table[col] = pd.Series(pd.array(survived, dtype="boolean"), index=index).reindex(table["index"]).array
        metrics[col.replace("_correct", "_acc")] = float(100.0 * survived.mean()) if len(survived) else None
    record["metrics"], record["evaluations"] = metrics, details
    record["flags"] = sorted(set(record["flags"]) | {f for f in old.get("flags", [])
                                                     if all(n in kept for n in _flag_names(f))})
    record["kept_evaluations"] = kept
    return table
