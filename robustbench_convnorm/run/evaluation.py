"""One evaluation path for every model in a record: the trained runs (after
training, or --eval-only) and outside models (``robustbench_convnorm.evaluate``)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict

from .. import distributed
from ..config import Config, to_dict

__all__ = ["evaluate_into"]


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
