"""Adversarial training with a multi-step attack per SGD step: PGD adversarial
training (Madry et al., ICLR 2018) and TRADES (Zhang et al., ICML 2019).

Both cost ``attack_steps + 1`` forward-backward passes per optimizer step (free
AT's ``replays`` passes give ``replays`` optimizer steps), which is what the
budget mode and the cost columns weigh them by.

- ``pgd``: x_adv = PGD-k on the cross-entropy from a uniform start in the
  eps-ball (Madry et al., Sec. 3 and their CIFAR-10 setup), then one SGD step on
  CE(f(x_adv), y). The attack runs in the model's training mode, as the
  reference implementations of PGD-AT on ResNets do (Rice et al. 2020), so
  BatchNorm's batch statistics and running averages see the attack's inputs.
- ``trades``: x_adv = PGD-k on KL(f(x) || f(x')) from x + 0.001 N(0, I), in
  eval mode (as the TRADES code does: ``model.eval()`` while crafting), then one
  SGD step on CE(f(x), y) + beta * KL(f(x) || f(x_adv)) (Zhang et al., Eq. 5),
  the KL summed over classes and averaged over the batch.

The step is ``train.step``, by default 2.5 eps / attack_steps (Madry et al.'s
rule: 2/255 for 10 steps at 8/255; the TRADES paper used 0.007 at 0.031, 10
steps). Random draws come from the method's device generator, for the global
batch under DDP and then sliced, so every rank stays in lockstep.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .methods import METHODS, Method


class _MultiStep(Method):
    train_options = ("eps", "step", "attack_steps")

    @property
    def attack_step(self) -> float:
        return 2.5 * self.cfg.eps / self.cfg.attack_steps if self.cfg.step is None else self.cfg.step

    def _ascend(self, x, delta, objective):
        """``attack_steps`` signed-gradient steps on ``objective(x + delta)``,
        projected onto the eps-ball and the image box; the final input, detached."""
        eps = self.cfg.eps
        for _ in range(self.cfg.attack_steps):
            delta.requires_grad_(True)
            grad, = torch.autograd.grad(objective((x + delta).clamp(0, 1)), delta)
            with torch.no_grad():
                delta = (delta + self.attack_step * grad.sign()).clamp(-eps, eps)
                delta = (x + delta).clamp(0, 1) - x
        return (x + delta).clamp(0, 1).detach()


@METHODS.register("pgd")
class PGDAdversarial(_MultiStep):
    """PGD adversarial training (Madry et al. 2018): each minibatch is replaced
    by its PGD-k adversarial examples, from a uniform random start in the ball."""

    def train_batch(self, x, y):
        eps = self.cfg.eps
        start = (self.global_rand(x) * 2 - 1) * eps
        delta = (x + start).clamp(0, 1) - x

        def ce(x_in):
            with self.autocast():
                return F.cross_entropy(self.forward(x_in).float(), y)

        x_adv = self._ascend(x, delta, ce)
        loss, logits = self.sgd_step(x_adv, y)
        return self.tally(loss, logits, y)


@METHODS.register("trades")
class TRADES(_MultiStep):
    """TRADES (Zhang et al. 2019): natural cross-entropy plus beta times the KL
    divergence between the clean and the adversarial predictions."""

    train_options = _MultiStep.train_options + ("trades_beta",)

    def train_batch(self, x, y):
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), self.autocast():
            clean_prob = F.softmax(self.forward(x).float(), dim=1)
        start = 0.001 * self.global_randn(x)

        def kl(x_in):
            with self.autocast():
                log_adv = F.log_softmax(self.forward(x_in).float(), dim=1)
            return F.kl_div(log_adv, clean_prob, reduction="sum")

        x_adv = self._ascend(x, start, kl)
        self.model.train(was_training)
        with self.autocast():
            logits = self.forward(x).float()
            log_adv = F.log_softmax(self.forward(x_adv).float(), dim=1)
        natural = F.cross_entropy(logits, y)
        robust = F.kl_div(log_adv, F.softmax(logits, dim=1), reduction="batchmean")
        loss = natural + self.cfg.trades_beta * robust
        total = self.weighted(loss) + self.penalty()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()
        return self.tally(loss.detach(), logits.detach(), y)
