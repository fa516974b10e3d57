"""Shared machinery of the evaluators that produce one adversarial input per
example (FGSM, PGD, AutoAttack, noise): batching, restarts, seeding, the
validity check of every adversarial input, per-example outcomes.

An example counts as correct only if it is correctly classified both clean
and on every adversarial input tried (the adversary may always keep x
itself, which lies in the eps-ball). ``adv_correct`` records the raw
prediction on the (last) adversarial input, for the robust <= clean check.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .base import EvalOutcome, Evaluator, batches, draw_seed, perturbation_norms, percent, seeded_global_rng


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
        """Adversarial inputs for one batch. May use torch's global RNG: ``run``
        seeds it from the evaluator's generator and restores it afterwards."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """Hook called once per ``run`` before the first batch (e.g. to infer n_classes)."""

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
            generator: torch.Generator, batch_size: int) -> EvalOutcome:
        n = x.shape[0]
        device = x.device
        correct = torch.zeros(n, dtype=torch.bool, device=device)
        adv_correct = torch.zeros(n, dtype=torch.bool, device=device)
        linf = torch.zeros(n, dtype=torch.float64, device=device)
        l2 = torch.zeros(n, dtype=torch.float64, device=device)
        validity: Dict[str, int] = {}
        loss_sums: Optional[List[torch.Tensor]] = None
        self.prepare(model, x, y)
        recorder = LossRecorder(model) if self.record_loss else None

        for start, stop in batches(n, batch_size):
            xb, yb = x[start:stop], y[start:stop]
            with torch.no_grad():
                clean_ok = model(xb).argmax(1) == yb
            survived = clean_ok.clone()
            last_ok = torch.zeros_like(clean_ok)
            todo = torch.arange(len(xb), device=device)
            for restart in range(self.restarts):
                if restart > 0:
                    todo = survived.nonzero().squeeze(1)
                    if todo.numel() == 0:
                        break
                xs, ys = xb[todo], yb[todo]
                seed = draw_seed(generator)
                target = model
                if recorder is not None and restart == 0:
                    recorder.labels, recorder.losses = ys, []
                    target = recorder
                with seeded_global_rng(seed, device):
                    x_adv = self.perturb(target, xs, ys).detach()
                checks.add_counts(validity, checks.validate_adversarial(xs, x_adv, self.eps, self.norm))
                with torch.no_grad():
                    out = target(x_adv)
                    ok = out.argmax(1) == ys
                if target is recorder:
                    step_sums = torch.stack(recorder.losses) if recorder.losses else None
                    recorder.labels, recorder.losses = None, []
                    if step_sums is not None:
                        loss_sums = [step_sums] if loss_sums is None else loss_sums + [step_sums]
                last_ok[todo] = ok
                survived[todo] &= ok
                a, b = perturbation_norms(xs, x_adv)
                linf[start + todo], l2[start + todo] = a, b
            correct[start:stop] = survived
            adv_correct[start:stop] = last_ok

        info: Dict[str, Any] = dict(self.describe(), validity=validity)
        if loss_sums:
            # every batch's restart-0 forwards: one row per batch, one column per forward
            lengths = {len(s) for s in loss_sums}
            if len(lengths) == 1:
                info["loss_curve"] = [float(v) / n for v in torch.stack(loss_sums).sum(0).tolist()]
        per_example = {
            "correct": correct.cpu().numpy(),
            "adv_correct": adv_correct.cpu().numpy(),
            "linf": linf.cpu().numpy(),
            "l2": l2.cpu().numpy(),
        }
        metrics = {"acc": percent(per_example["correct"]), "adv_acc": percent(per_example["adv_correct"]),
                   "n": int(n)}
        return EvalOutcome(per_example=per_example, metrics=metrics, info=info)


def set_torchattacks_device(attack, device: torch.device):
    attack.set_device(device)
    return attack


def torchattacks_version() -> str:
    import torchattacks
    return getattr(torchattacks, "__version__", "?")
