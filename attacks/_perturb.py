"""Shared machinery of the evaluators that produce one adversarial input per
example (FGSM, PGD, AutoAttack, noise): restarts, seeding, the validity
check of every adversarial input, per-example outcomes.

An example counts as correct only if it is correctly classified both clean
and on every adversarial input tried (the adversary may always keep x
itself, which lies in the eps-ball). ``adv_correct`` records the raw
prediction on the (last) adversarial input.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .base import (BatchOutcome, EvalOutcome, Evaluator, draw_seed, percent, perturbation_norms,
                   seeded_global_rng)


class LossRecorder(nn.Module):
    """Wraps a model and records the summed cross-entropy of every forward
    whose batch matches the labels set, without a host synchronisation."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.labels: Optional[torch.Tensor] = None
        self.losses: List[torch.Tensor] = []
        # a new Module starts in training mode; torchattacks restores the mode it
        # finds, so the wrapper must report the wrapped model's (eval) mode
        self.train(model.training)

    def forward(self, x):
        out = self.model(x)
        if self.labels is not None and out.dim() == 2 and out.shape[0] == self.labels.shape[0]:
            self.losses.append(F.cross_entropy(out.detach().float(), self.labels, reduction="sum"))
        return out


class PerturbationEvaluator(Evaluator):
    """Base of evaluators defined by ``perturb(model, x, y) -> x_adv``."""

    kind = "whitebox"
    restarts: int = 1
    #: record the mean loss at every forward of the attack (PGD's loss curve)
    record_loss: bool = False

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial inputs for one batch. May use torch's global RNG: the
        batch runs with it seeded from the batch's generator, restored after."""
        raise NotImplementedError

    def empty_columns(self):
        return {"correct": np.zeros(0, bool), "adv_correct": np.zeros(0, bool),
                "linf": np.zeros(0), "l2": np.zeros(0)}

    def attack_batch(self, model, x, y, *, generator, example_seeds) -> BatchOutcome:
        n, device = len(x), x.device
        linf = torch.zeros(n, dtype=torch.float64, device=device)
        l2 = torch.zeros(n, dtype=torch.float64, device=device)
        validity: Dict[str, int] = {}
        loss_sums: Optional[List[float]] = None
        recorder = LossRecorder(model) if self.record_loss else None
        with torch.no_grad():
            clean_ok = model(x).argmax(1) == y
        survived = clean_ok.clone()
        last_ok = torch.zeros_like(clean_ok)
        todo = torch.arange(n, device=device)
        for restart in range(self.restarts):
            if restart > 0:
                todo = survived.nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
            xs, ys = x[todo], y[todo]
            seed = draw_seed(generator)
            target = model
            if recorder is not None and restart == 0:
                recorder.labels, recorder.losses = ys, []
                target = recorder
            with seeded_global_rng(seed, device):
                x_adv = self.perturb(target, xs, ys).detach()
            checks.add_counts(validity, checks.validate_adversarial(xs, x_adv, self.eps, self.norm))
            with torch.no_grad():
                ok = target(x_adv).argmax(1) == ys
            if target is recorder:
                if recorder.losses:
                    # one host read per batch, none per step
                    loss_sums = [float(v) for v in torch.stack(recorder.losses).tolist()]
                recorder.labels, recorder.losses = None, []
            last_ok[todo] = ok
            survived[todo] &= ok
            a, b = perturbation_norms(xs, x_adv)
            linf[todo], l2[todo] = a, b
        per_example = {"correct": survived.cpu().numpy(), "adv_correct": last_ok.cpu().numpy(),
                       "linf": linf.cpu().numpy(), "l2": l2.cpu().numpy()}
        totals: Dict[str, Any] = {"validity": validity}
        if loss_sums is not None:
            totals["loss_sums"] = loss_sums
        return BatchOutcome(per_example=per_example, totals=totals)

    def finish(self, per_example, totals) -> EvalOutcome:
        n = len(per_example["correct"])
        info: Dict[str, Any] = dict(self.describe(), validity=dict(totals.get("validity") or {}))
        sums = totals.get("loss_sums")
        if sums and n:
            # restart-0 forwards of every batch added up: one value per forward
            info["loss_curve"] = [float(v) / n for v in sums]
        metrics = {"acc": percent(per_example["correct"]), "adv_acc": percent(per_example["adv_correct"]),
                   "n": int(n)}
        return EvalOutcome(per_example=per_example, metrics=metrics, info=info)


def torchattacks_version() -> str:
    import torchattacks
    return getattr(torchattacks, "__version__", "?")
