"""Robust overfitting, noticed and remedied, from the per-epoch validation
PGD accuracy of ``train_log.csv`` (``val_pgd_acc``, in %).

Flags (into the record's ``flags``; the numbers into ``training.overfitting``):

``train:catastrophic_overfit``
    an epoch's validation PGD accuracy falls to at most ``CO_FRACTION`` (half)
    of the best of the epochs before it, and by at least ``CO_MIN_DROP`` (10)
    points: the sudden collapse of single-step training (FGSM-RS; Wong et al.
    2020, Andriushchenko & Flammarion 2020).
``train:robust_overfit``
    the last epoch's validation PGD accuracy is below the best epoch's by at
    least ``RO_MIN_DROP`` (3) points and by at least ``RO_SE`` (2) standard
    errors of a difference of two accuracies on the validation examples
    (``sqrt(2 p (1 - p) / n)``, p the best accuracy): the slow decline late
    in adversarial training (Rice et al. 2020). Measured on the validation
    split when ``data.val_size`` > 0; on training images (the default
    subset) a decline is a collapse of training itself.

Remedy (``train.select: best_val_pgd``): the weights of the epoch with the
best validation PGD accuracy (the earliest of ties) are the ones evaluated
and saved as the finished checkpoint's ``model``, as Rice et al. select by
validation. The state (epoch, accuracy, weights) is in every checkpoint.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["CO_FRACTION", "CO_MIN_DROP", "RO_MIN_DROP", "RO_SE", "BestValPGD", "overfitting_flags"]

CO_FRACTION = 0.5
CO_MIN_DROP = 10.0
RO_MIN_DROP = 3.0
RO_SE = 2.0
CATASTROPHIC = "train:catastrophic_overfit"
ROBUST = "train:robust_overfit"


def _pgd(rows: Sequence[Dict[str, Any]]) -> List[Tuple[int, float]]:
    out = []
    for row in rows:
        value = row.get("val_pgd_acc")
        if value is not None and value != "" and math.isfinite(float(value)):
            out.append((int(row["epoch"]), float(value)))
    return out


def overfitting_flags(rows: Sequence[Dict[str, Any]], n_examples: int) -> Tuple[List[str], Dict[str, Any]]:
    """(flags, details) from the per-epoch rows (see the module's doc)."""
    series = _pgd(rows)
    details: Dict[str, Any] = {"thresholds": {"co_fraction": CO_FRACTION, "co_min_drop": CO_MIN_DROP,
                                              "ro_min_drop": RO_MIN_DROP, "ro_standard_errors": RO_SE,
                                              "n_examples": int(n_examples)},
                               "catastrophic": None, "robust": None}
    flags: List[str] = []
    if not series:
        return flags, details
    best_before: Optional[float] = None
    for epoch, acc in series:
        if best_before is not None and acc <= CO_FRACTION * best_before and best_before - acc >= CO_MIN_DROP:
            details["catastrophic"] = {"epoch": epoch, "val_pgd_acc": acc, "best_before": best_before}
            flags.append(CATASTROPHIC)
            break
        best_before = acc if best_before is None else max(best_before, acc)
    best_epoch, best = max(series, key=lambda item: (item[1], -item[0]))
    last_epoch, last = series[-1]
    p = min(max(best / 100.0, 0.0), 1.0)
    se = 100.0 * math.sqrt(2 * p * (1 - p) / max(int(n_examples), 1))
    drop = best - last
    if last_epoch > best_epoch and drop >= RO_MIN_DROP and drop >= RO_SE * se:
        flags.append(ROBUST)
        details["robust"] = {"best_epoch": best_epoch, "best_val_pgd_acc": best, "last_epoch": last_epoch,
                             "last_val_pgd_acc": last, "drop": drop, "standard_error": se}
    return flags, details


class BestValPGD:
    """The weights of the epoch with the best validation PGD accuracy so far."""

    def __init__(self):
        self.epoch: Optional[int] = None
        self.acc: Optional[float] = None
        self.state: Optional[Dict[str, torch.Tensor]] = None

    def observe(self, epoch: int, val_pgd_acc: Optional[float], model: nn.Module) -> None:
        if val_pgd_acc is None or (self.acc is not None and val_pgd_acc <= self.acc):
            return
        self.epoch, self.acc = int(epoch), float(val_pgd_acc)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "val_pgd_acc": self.acc, "state": self.state}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.epoch, self.acc, self.state = state["epoch"], state["val_pgd_acc"], state["state"]
