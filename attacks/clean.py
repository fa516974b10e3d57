"""Clean accuracy: the model's top-1 prediction on the unperturbed inputs."""
from __future__ import annotations

from typing import Optional

import torch

from .base import EvalOutcome, Evaluator, batches, percent
from .registry import register_evaluator


@register_evaluator("clean")
class Clean(Evaluator):
    """Result name ``clean``; per example ``correct`` and ``pred`` (the predicted class)."""

    kind = "clean"

    def __init__(self, *, name: Optional[str] = None):
        super().__init__(name=name)

    def run(self, model, x, y, *, generator, batch_size) -> EvalOutcome:
        preds = torch.empty(len(x), dtype=torch.long, device=x.device)
        with torch.no_grad():
            for start, stop in batches(len(x), batch_size):
                preds[start:stop] = model(x[start:stop]).argmax(1)
        correct = (preds == y).cpu().numpy()
        return EvalOutcome(per_example={"correct": correct, "pred": preds.cpu().numpy()},
                           metrics={"acc": percent(correct), "n": int(len(x))}, info=self.describe())
