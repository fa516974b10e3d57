"""Certified L2 radii from logits and a network bound.

If every logit difference z_i - z_j is Lipschitz with constant c_ij, the
prediction y cannot change within the L2 radius min_j (z_y - z_j) / c_yj.
With a bound L of the logits (L2 to L2), c_ij <= sqrt(2) L (a difference of
two coordinates); when the last layer is linear on features bounded by L_f,
c_ij <= ||w_i - w_j|| L_f. Both are sound; the radius is the larger.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

__all__ = ["certified_radii"]


def certified_radii(logits: torch.Tensor, labels: torch.Tensor, bound: float, *, features: Optional[float] = None,
                    final_weight: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(radius, margin) per example, float64. The radius is 0 where the
    prediction is wrong or tied; ``margin`` is z_y - max_{j != y} z_j.

    Example::

        >>> certified_radii(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), 1.0)[0]   # 2 / sqrt(2)
        tensor([1.4142], dtype=torch.float64)
    """
    z = logits.detach().to(torch.float64)
    y = labels.long().view(-1, 1)
    own = z.gather(1, y)
    diff = own - z                                              # (N, classes); 0 at the label
    others = torch.ones_like(z, dtype=torch.bool).scatter_(1, y, False)
    margin = torch.where(others, diff, torch.full_like(diff, math.inf)).amin(1)
    if bound <= 0:
        radius = torch.where(margin > 0, torch.full_like(margin, math.inf), torch.zeros_like(margin))
        return radius, margin
    radius = margin.clamp(min=0) / (math.sqrt(2.0) * bound)
    if features is not None and final_weight is not None and features > 0:
        w = final_weight.to(device=z.device, dtype=torch.float64)
        pair_norm = torch.cdist(w, w)                             # ||w_i - w_j||
        c = pair_norm[labels.long()] * features                   # (N, classes)
        per_pair = torch.where(others & (c > 0), diff.clamp(min=0) / c.clamp(min=1e-300),
                               torch.full_like(diff, math.inf))
        per_pair = torch.where(others & (c <= 0) & (diff <= 0), torch.zeros_like(diff), per_pair)
        radius = torch.maximum(radius, per_pair.amin(1))
    radius = torch.where(margin > 0, radius, torch.zeros_like(radius))
    return radius, margin
