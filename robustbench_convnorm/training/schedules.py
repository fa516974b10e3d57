"""Learning-rate schedules as a multiplier of the base lr, stepped once per
optimizer step and defined in epochs (fractional within an epoch)."""
from __future__ import annotations

import math
from bisect import bisect_right

from torch.optim.lr_scheduler import LambdaLR


def lr_factor(name: str, epoch: float, total_epochs: int, milestones=(), gamma=0.1, warmup_fraction=0.4) -> float:
    if name == "constant":
        return 1.0
    if name == "multistep":  # lr * gamma^(milestones passed), switching at epoch starts
        return gamma ** bisect_right(list(milestones), int(epoch + 1e-9))
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, total_epochs) / max(total_epochs, 1)))
    if name == "cyclic":  # "Fast is better than free": 0 -> lr -> 0, piecewise linear
        peak = warmup_fraction * total_epochs
        if epoch <= peak:
            return epoch / peak if peak > 0 else 1.0
        return max(0.0, (total_epochs - epoch) / max(total_epochs - peak, 1e-12))
    raise ValueError(f"unknown schedule {name!r}")


def make_scheduler(optimizer, train_cfg, steps_per_epoch: int) -> LambdaLR:
    def factor(step: int) -> float:
        return lr_factor(train_cfg.schedule, step / steps_per_epoch, train_cfg.epochs, train_cfg.milestones,
                         train_cfg.gamma, train_cfg.warmup_fraction)
    return LambdaLR(optimizer, factor)
