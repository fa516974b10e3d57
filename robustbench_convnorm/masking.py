"""Why is a run flagged for masking? ``robustbench-convnorm masking RUN_DIR ...``

The masking check (attacks/checks.py) flags a model whose PGD leaves clearly
more test images correct than AutoAttack's APGD-CE + APGD-T. That says *that*
PGD is fooled, not *why*. This command attacks a trained run's own evaluated
test images (the same seeded subset as its evaluation) with one attack per
cause, all at the run's threat-model eps:

- more cross-entropy optimisation: PGD with 5x the steps at a quarter of the
  step, and APGD-CE (adaptive step);
- another loss: APGD with the DLR loss (free of the logits' scale), untargeted;
- targeted: APGD-T (DLR, 9 target classes, torchattacks' default).

If longer cross-entropy attacks stay near PGD while the DLR and targeted ones
go far below, the cross-entropy loss is what fails on the model (its gradient
does not point to the nearest wrong class), not the steps or the step size.
The printed table also gives the median top-2 logit margin and the logits'
spread, the scale a cross-entropy gradient sees. A CSV goes to ``--out``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pandas as pd
import torch

from . import atomic
from .attacks._selection import evaluation_order
from .config import config_from_dict
from .data import load_full, prepare_data, to_float
from .loading import load_model
from .records import read_record

PROG = "robustbench-convnorm masking"


def evaluated_images(model, n_examples: Optional[int] = None):
    """The run's evaluated test images (float in [0, 1]) and labels, picked as
    the evaluation protocol picks them (attacks/_selection.evaluation_order);
    ``n_examples`` fewer takes the head of the same seeded order."""
    cfg = config_from_dict(model.run_config, "<record>")
    seed = int((model.run_config.get("seeds") or [0])[0])  # a run's config holds its own seed alone
    data = prepare_data(cfg.data, seed, load_full(cfg.data))
    _, idx = evaluation_order(len(data.test_y), n_examples or cfg.eval.n_examples, cfg.eval.seed)
    idx = torch.from_numpy(idx)
    return to_float(data.test_x[idx]), data.test_y[idx].long()


def diagnose(model, x, y, eps: float, steps: int, batch_size: int = 500, seed: int = 0) -> Dict[str, float]:
    """Accuracy (%) under each attack of the module docstring, plus the logits' scale."""
    import torchattacks

    def logits_of(inputs) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])

    def accuracy(logits) -> float:
        return 100.0 * float(logits.argmax(1).eq(y).float().mean())

    def attacked(attack) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.cat([attack(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    logits = logits_of(x)
    top2 = logits.topk(2, dim=1).values
    n_classes = logits.shape[1]
    attacks = {
        f"pgd{steps}_ce": torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True),
        f"pgd{5 * steps}_ce_small_step": torchattacks.PGD(model, eps=eps, alpha=eps / 16, steps=5 * steps,
                                                          random_start=True),
        f"apgd{steps}_ce": torchattacks.APGD(model, eps=eps, steps=steps, loss="ce", seed=seed),
        f"apgd{steps}_dlr": torchattacks.APGD(model, eps=eps, steps=steps, loss="dlr", seed=seed),
        f"apgdt{steps}_dlr": torchattacks.APGDT(model, eps=eps, steps=steps, n_classes=n_classes, seed=seed),
    }
    out = {"clean": accuracy(logits), "top2_margin_median": float((top2[:, 0] - top2[:, 1]).median()),
           "logit_std_median": float(logits.std(dim=1).median())}
    for name, attack in attacks.items():
        out[name] = accuracy(logits_of(attacked(attack)))
    return out


def threat_eps(record: Dict) -> float:
    """The L-inf eps of the run's threat model as its evaluation decided it
    (attacks/protocol.py marks each evaluation ``in_threat_model``): the ball
    the masking check compared PGD and AutoAttack in."""
    for ev in (record.get("evaluations") or {}).values():
        if ev.get("kind") == "whitebox" and ev.get("in_threat_model") and ev.get("norm", "Linf") == "Linf" \
                and ev.get("eps") is not None:
            return float(ev["eps"])
    raise ValueError(f"run {record.get('run_id', '?')}: no L-inf white-box evaluation in its threat model; "
                     f"evaluate it first (robustbench-convnorm run CONFIG --eval-only)")


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (<output_dir>/runs/<run_id>)")
    p.add_argument("--steps", type=int, default=20, help="iterations of each attack (PGD's long one: 5x)")
    p.add_argument("--n-examples", type=int, default=None, help="fewer test images than the run evaluated")
    p.add_argument("--out", type=Path, default=None, help="a CSV of the table")
    args = p.parse_args(argv)
    rows: List[Dict] = []
    for run in args.runs:
        record = read_record(run)
        if record is None:
            print(f"error: {run} has no valid record.json: give a run folder that finished", file=sys.stderr)
            return 2
        eps = threat_eps(record)
        model = load_model(run)
        x, y = evaluated_images(model, args.n_examples)
        row = {"run": Path(run).name, "n": len(y), "eps": eps, **diagnose(model, x, y, eps, args.steps)}
        rows.append(row)
        print("  ".join(f"{k}={v:.4g}" if k == "eps" else f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in row.items()), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_csv(args.out, pd.DataFrame(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
