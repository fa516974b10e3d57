"""Clean accuracy: the model's top-1 prediction on the unperturbed inputs."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .base import BatchOutcome, Evaluator
from .registry import register_evaluator


@register_evaluator("clean")
class Clean(Evaluator):
    """Result name ``clean``; per example ``correct`` and ``pred`` (the predicted class)."""

    kind = "clean"

    def __init__(self, *, name: Optional[str] = None):
        super().__init__(name=name)

    def empty_columns(self):
        return {"correct": np.zeros(0, bool), "pred": np.zeros(0, np.int64)}

    def attack_batch(self, model, x, y, *, generator, example_seeds) -> BatchOutcome:
        with torch.no_grad():
            pred = model(x).argmax(1)
        return BatchOutcome(per_example={"correct": (pred == y).cpu().numpy(), "pred": pred.cpu().numpy()})
