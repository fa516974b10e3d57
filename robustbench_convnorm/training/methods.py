"""Training methods, one minibatch at a time; they share the loop in loop.py.

Each ``train_batch`` returns (sum of losses, number correct, number seen) as
device tensors, so the loop never synchronises with the host mid-epoch.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

from ..registry import Registry
from .losses import training_loss

METHODS: Registry = Registry("training method")


class Method:
    #: the train.* config keys this method reads beyond the shared ones (``--list`` shows them)
    train_options: Tuple[str, ...] = ()

    def __init__(self, train_cfg, model, optimizer, scheduler, penalty: Callable[[], torch.Tensor],
                 autocast, device, forward=None):
        self.cfg, self.model, self.optimizer, self.scheduler = train_cfg, model, optimizer, scheduler
        # what computes the logits: the model, or its compiled forward (speed.compile)
        self.forward = model if forward is None else forward
        self.penalty, self.autocast, self.device = penalty, autocast, device
        # Randomness of perturbations (fgsm_rs starts) lives on the device.
        self.generator = torch.Generator(device=device)
        # Under DDP: this rank's slice of the current global batch
        # (distributed.BatchShard: lo, hi, n, weight, gather); None otherwise.
        self.shard = None
        self.criterion = training_loss(train_cfg)  # train.loss (losses.py)

    @staticmethod
    def optimizer_steps_per_batch(train_cfg) -> int:
        """Optimizer (and scheduler) steps one minibatch takes."""
        return 1

    def loss(self, x, y):
        with self.autocast():
            logits = self.forward(x)
            loss = self.criterion(logits.float(), y)
        return loss, logits

    def weighted(self, loss):
        """The loss to differentiate: under DDP the rank's mean weighted by its
        share of the global batch (distributed.BatchShard.weight)."""
        return loss if self.shard is None else loss * self.shard.weight

    def sgd_step(self, x, y):
        loss, logits = self.loss(x, y)
        total = self.weighted(loss) + self.penalty()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), logits.detach()

    def state_dict(self) -> Dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict) -> None:
        self.generator.set_state(state["generator"].cpu() if self.device.type == "cpu" else state["generator"])

    def _global_draw(self, draw, x):
        """``draw(shape)`` for this batch; under DDP drawn for the global batch and
        sliced to this rank's rows, so the generator stays in lockstep on every rank
        (a rank with a weight-0 stand-in example draws too, and gets zeros)."""
        shape = x.shape if self.shard is None else (self.shard.n,) + tuple(x.shape[1:])
        values = draw(shape)
        if self.shard is None:
            return values
        return torch.zeros_like(x) if self.shard.empty else values[self.shard.lo:self.shard.hi]

    def global_rand(self, x):
        """Uniform [0, 1) noise shaped like ``x`` from the method's generator (see _global_draw)."""
        return self._global_draw(lambda shape: torch.rand(shape, generator=self.generator, device=x.device), x)

    def global_randn(self, x):
        """Standard normal noise shaped like ``x`` from the method's generator (see _global_draw)."""
        return self._global_draw(lambda shape: torch.randn(shape, generator=self.generator, device=x.device), x)

    def tally(self, loss, logits, y):
        if self.shard is not None and self.shard.empty:  # DDP: a stand-in example counts for nothing
            return loss * 0, (logits.argmax(1) == y).sum() * 0, 0
        return loss * len(y), (logits.argmax(1) == y).sum(), len(y)

    def rows(self, b: int):
        """Rows [lo, hi) of the global batch this process perturbs (all ``b`` in a
        plain process), and whether its input is a weight-0 stand-in (DDP)."""
        if self.shard is None:
            return 0, b, False
        return self.shard.lo, self.shard.hi, self.shard.empty


@METHODS.register("natural")
class Natural(Method):
    """Plain training on clean inputs."""

    def train_batch(self, x, y):
        loss, logits = self.sgd_step(x, y)
        return self.tally(loss, logits, y)


@METHODS.register("free")
class Free(Method):
    """Free adversarial training (Shafahi et al. 2019): each minibatch is
    replayed m times; one backward gives both the parameter step and the
    perturbation step. delta persists across minibatches unless reset_delta."""

    train_options = ("eps", "step", "replays", "reset_delta")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = self.cfg.eps
        self.step = self.cfg.eps if self.cfg.step is None else self.cfg.step
        self.delta = None

    @staticmethod
    def optimizer_steps_per_batch(train_cfg) -> int:
        return train_cfg.replays

    def train_batch(self, x, y):
        b = len(y)
        # rows of delta this process perturbs: the batch (a smaller last batch
        # uses a prefix), or under DDP this rank's slice of the global batch
        lo, hi, stand_in = self.rows(b)
        if self.delta is None:
            self.delta = torch.zeros((self.cfg.batch_size,) + tuple(x.shape[1:]), device=x.device)
        if self.cfg.reset_delta:
            self.delta.zero_()
        loss_sum = correct = 0
        for _ in range(self.cfg.replays):
            # a stand-in example (weight 0) gets a perturbation of its own, written nowhere
            d = (torch.zeros_like(x) if stand_in else self.delta[lo:hi].clone()).requires_grad_(True)
            loss, logits = self.loss((x + d).clamp(0, 1), y)
            total = self.weighted(loss) + self.penalty()
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            self.scheduler.step()
            if not stand_in:
                with torch.no_grad():
                    self.delta[lo:hi] = (d + self.step * d.grad.sign()).clamp(-self.eps, self.eps)
            l, c, _ = self.tally(loss.detach(), logits.detach(), y)
            loss_sum, correct = loss_sum + l, correct + c
        if self.shard is not None:  # every rank keeps the whole batch's delta: checkpoints, uneven batches
            with torch.no_grad():
                self.delta[:self.shard.n] = self.shard.gather(self.delta[lo:hi])
        return loss_sum, correct, (0 if stand_in else b) * self.cfg.replays

    def state_dict(self):
        state = super().state_dict()
        state["delta"] = self.delta
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.delta = state["delta"]


@METHODS.register("fgsm_rs")
class FGSMRandomStart(Method):
    """"Fast is better than free" (Wong et al. 2020): FGSM from a uniform
    random start in the eps-ball, step 1.25 eps by default."""

    train_options = ("eps", "step")

    def train_batch(self, x, y):
        eps = self.cfg.eps
        step = 1.25 * eps if self.cfg.step is None else self.cfg.step
        delta = (self.global_rand(x) * 2 - 1) * eps
        delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
        loss, _ = self.loss(x + delta, y)
        grad, = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + step * grad.sign()).clamp(-eps, eps)
            x_adv = (x + delta).clamp(0, 1)
        loss, logits = self.sgd_step(x_adv, y)
        return self.tally(loss, logits, y)
