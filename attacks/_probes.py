"""Model probes, run once before the attacks on a few evaluated examples: is
the model deterministic, independent of its batch, differentiable, and does
it output logits? Each failed probe is a (flag, note) pair; the flags are
listed in docs/evaluators.md."""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: flag zero_grad when at least this fraction of probed examples has a zero input gradient
ZERO_GRAD_FRACTION = 0.05
#: relative tolerance of the determinism probe (scaled by the largest |logit|)
DETERMINISM_RTOL = 1e-5
#: relative tolerance of the batch probe (scaled likewise). Looser than the
#: determinism probe: a batch of one may run other kernels (other summation
#: orders, TF32 on GPUs), which moves logits by far less than this; batch
#: statistics in eval mode move them by a large part of their size.
BATCH_RTOL = 1e-2
#: examples the batch probe also runs one at a time
BATCH_PROBE_SINGLES = 16


def _scale(logits: torch.Tensor) -> float:
    return float(logits.detach().abs().max()) if logits.numel() and torch.isfinite(logits).all() else 1.0


def probe_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> List[Tuple[str, str]]:
    """Determinism, batch independence, gradients and output type on one batch."""
    out: List[Tuple[str, str]] = []
    with torch.no_grad():
        a = model(x)
        b = model(x)
    if not torch.isfinite(a).all():
        out.append(("nan_output", "the model's outputs on clean inputs hold NaN/inf"))
    scale = _scale(a)
    diff = float((a.double() - b.double()).abs().max()) if a.shape == b.shape else float("inf")
    if not (diff <= DETERMINISM_RTOL * (1.0 + scale)):
        out.append(("nondeterministic",
                    f"two identical forwards differ by {diff:.3g} (largest |logit| {scale:.3g})"))
    out.extend(probe_batch_dependence(model, x, a))
    if a.shape[1] > 1 and bool(((a >= 0).all())) and torch.allclose(
            a.double().sum(1), torch.ones(a.shape[0], dtype=torch.float64, device=a.device), atol=1e-4):
        out.append(("not_logits", "outputs are non-negative rows summing to 1 (probabilities, not logits)"))

    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        grad = torch.autograd.grad(loss, xg, allow_unused=True)[0] if loss.requires_grad else None
    if grad is None:
        grad = torch.zeros_like(xg)
    grad = grad.detach().flatten(1)
    if not torch.isfinite(grad).all():
        out.append(("nan_grad", "input gradients hold NaN/inf"))
    zero = (grad == 0).all(1)
    frac = float(zero.double().mean())
    if frac >= ZERO_GRAD_FRACTION:
        out.append(("zero_grad", f"input gradient exactly zero on {100 * frac:.1f}% of {len(zero)} probed examples"))
    return out


def probe_batch_dependence(model: nn.Module, x: torch.Tensor, batched: torch.Tensor) -> List[Tuple[str, str]]:
    """The first examples one at a time against the same examples inside the
    batch ``x`` (whose outputs are ``batched``): an eval-mode model's output
    for an example must not depend on the other examples of its batch (batch
    statistics in eval mode do). Attacks run at one batch size and the
    reported accuracy at another would then measure different models."""
    k = min(BATCH_PROBE_SINGLES, len(x))
    if k < 2:
        return []
    with torch.no_grad():
        single = torch.cat([model(x[i:i + 1]) for i in range(k)])
    ref = batched[:k]
    if single.shape != ref.shape:
        return [("batch_dependent", f"outputs one at a time have shape {tuple(single.shape[1:])}, "
                                    f"in a batch {tuple(ref.shape[1:])}")]
    diff = float((single.double() - ref.double()).abs().max())
    scale = _scale(ref)
    if not (diff <= BATCH_RTOL * (1.0 + scale)):
        flips = int((single.argmax(1) != ref.argmax(1)).sum())
        return [("batch_dependent",
                 f"{k} examples one at a time differ from the same examples in a batch of {len(x)} by up to "
                 f"{diff:.3g} (largest |logit| {scale:.3g}; {flips} of {k} predictions change): the model's "
                 "eval-mode output depends on the rest of its batch")]
    return []
