"""Training losses, chosen by ``train.loss``.

``cross_entropy``: the ordinary loss (every method's default).

``offset_cross_entropy``: the loss 1-Lipschitz networks are trained with for
certified robustness in "1-Lipschitz Layers Compared" (Prach et al., CVPR
2024; introduced with AOL, Prach & Lampert, ECCV 2022): the true class's
logit is lowered by an offset before a cross-entropy at a temperature,

    loss(z, y) = T * CE((z - sqrt(2) m e_y) / T, y),

with m = ``train.loss_margin`` and T = ``train.loss_temperature``. For a
network with L2 Lipschitz constant 1, a logit margin above sqrt(2) r
certifies the L2 radius r, so the offset asks for margins that certify
radius m. The factor T keeps the gradient's scale independent of T.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LOSSES = ("cross_entropy", "offset_cross_entropy")


def offset_cross_entropy(logits: torch.Tensor, y: torch.Tensor, margin: float, temperature: float) -> torch.Tensor:
    offset = math.sqrt(2.0) * margin
    shifted = logits - offset * F.one_hot(y, logits.shape[-1]).to(logits.dtype)
    return F.cross_entropy(shifted / temperature, y) * temperature


def training_loss(train_cfg) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """loss(logits, y) for a ``train`` config section."""
    name = getattr(train_cfg, "loss", "cross_entropy")
    if name == "cross_entropy":
        return F.cross_entropy
    if name == "offset_cross_entropy":
        margin, temperature = float(train_cfg.loss_margin), float(train_cfg.loss_temperature)
        return lambda logits, y: offset_cross_entropy(logits, y, margin, temperature)
    raise ValueError(f"unknown train.loss {name!r}: choose one of {', '.join(LOSSES)}")
