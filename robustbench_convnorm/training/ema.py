"""An exponential moving average of a model's weights (``train.ema``), one of
the field's remedies for robust overfitting (e.g. Rebuffi et al. 2021).

After every optimizer step each parameter's average moves towards it:
``avg = d * avg + (1 - d) * p`` with ``d = min(decay, (1 + t) / (10 + t))`` at
step t, so the first steps do not pull towards the random initialisation.
Only parameters are averaged; buffers (BatchNorm's running statistics,
spectral norm's power-iteration vectors) are the live model's when the
averaged weights are used, because an average of normalised vectors is no
longer normalised. The state (averages and step count) goes into every
checkpoint, so a resumed run ends with the averages of an uninterrupted one.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator

import torch
from torch import nn

__all__ = ["WeightEMA"]


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"train.ema: the decay must be in (0, 1), e.g. 0.999; got {decay}")
        self.decay = float(decay)
        self.steps = 0
        self.params = dict(model.named_parameters())
        self.average = {name: p.detach().clone() for name, p in self.params.items()}

    def attach(self, optimizer: torch.optim.Optimizer):
        """Update after each step of ``optimizer`` (a step post hook; every
        training method steps through it)."""
        return optimizer.register_step_post_hook(lambda *_: self.update())

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        decay = min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
        for name, p in self.params.items():
            self.average[name].lerp_(p.detach(), 1.0 - decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own after."""
        saved = {name: p.detach().clone() for name, p in self.params.items()}
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(saved[name])

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for name, p in self.params.items():
            p.copy_(self.average[name])

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "steps": self.steps,
                "average": {k: v.detach().clone() for k, v in self.average.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state["average"]) != set(self.average):
            raise ValueError("train.ema: the checkpoint's averaged weights do not match the model's parameters")
        self.steps = int(state["steps"])
        with torch.no_grad():
            for name, value in state["average"].items():
                self.average[name].copy_(value)
