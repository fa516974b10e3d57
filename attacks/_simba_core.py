"""SimBA's algorithm (Guo et al., ICML 2019), batched: a black-box attack that
sees only the model's scores. The evaluator around it is ``attacks.simba``.

For each image, a random order over the coordinates of a basis (pixels, or
the full-image orthonormal 2-D DCT of each channel) is given. Iteration k
takes the k-th coordinate q of the image's order and, by the step rule:

* ``minus_first`` (the paper's Algorithm 1, and the authors' one-image
  ``simba_single``): tries ``delta - step*q``, accepted if the image's score
  drops; only if it is not accepted, tries ``delta + step*q``, accepted if
  the score drops below the current one.
* ``best_of_both`` (the authors' batched ``simba_batch``, which made the
  published tables): queries both; the minus step is accepted if its score
  is below the current one, and the plus step replaces it if its score is
  below both the current score and the minus step's. So a plus step that
  beats an accepted minus step wins, which ``minus_first`` never tries.

Queries are counted as the reference does under both rules: 1 for an
iteration whose minus step is accepted, else 2 (under ``best_of_both`` the
model is asked twice every iteration; the count stays the reference's so
that the published averages compare). A step whose input, after clipping
and clamping to [0, 1], equals the current input (a pixel already at 0 or 1)
is never accepted: in exact arithmetic its score ties, but a model's
last-bit rounding varies with the batch an input is computed in, and a
no-op minus step accepted on that noise skipped the plus step (ConvNorm's
pixel SimBA lost 11.5 points of success between batches of 1 and 100). Every
queried input, the first included, is built the same way
(``clamp(x + delta, 0, 1)``, contiguous), so identical inputs are scored
identically wherever the model is batch-invariant.

Before each iteration the image is checked for success (top-1 logit no
longer the true class); that check is not counted, and a successful image
stops. The number of iterations is capped (by default at the number of
coordinates). The adversarial input is ``clamp(x + delta, 0, 1)``, with delta
first clipped to ``[-linf_bound, linf_bound]`` when a bound is set.

Scores (lower is better for the attacker):

* ``log_odds`` (default): ``log(p_y / (1 - p_y)) = z_y - logsumexp_{j != y} z_j``
  from the logits in float64. Strictly increasing in the true-class
  probability p_y, so in exact arithmetic it accepts exactly the steps the
  probability score accepts; but it does not saturate. In float32 p_y rounds
  to exactly 1.0 once the true logit leads the others by about 17, after which
  every step ties and the attack stalls: a model whose logits are merely
  larger (the same classifier) then looks more robust.
* ``prob``: the true-class softmax probability in the model's precision (at
  least float32), as the reference code scores; kept for faithful
  reproduction of published numbers.

Whatever the score, each image records whether its starting probability
under ``prob`` is exactly 1.0 (``saturated``).

Batched: a pool of up to ``batch_size`` images is attacked at once on the
model's device; an image that succeeds or reaches the cap leaves the pool and
the next image enters. The success check reuses the logits of the last
accepted (or initial) query, so it costs no extra forward; each image's
initial scores take one uncounted forward, as in the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from . import _progress

SCORES = ("log_odds", "prob")
STEP_RULES = ("minus_first", "best_of_both")


def dct_matrix(n: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (row k = k-th cosine): coefficients c = D x,
    x = D^T c; a 2-D image X has coefficients D_h X D_w^T."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] = d[0] / math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def n_coordinates(basis: str, shape, freq_dims: Optional[int]) -> int:
    """Size of the search space for images of ``shape`` (C, H, W)."""
    if basis == "pixel":
        return int(np.prod(shape))
    if len(shape) != 3:
        raise ValueError(f"simba: the DCT basis needs (C, H, W) images, got shape {tuple(shape)}")
    c, h, w = shape
    fh, fw = (h, w) if freq_dims is None else (min(freq_dims, h), min(freq_dims, w))
    return c * fh * fw


class Basis:
    """Coordinates of the search space and how a step along one changes delta."""

    def __init__(self, kind: str, shape, *, freq_dims: Optional[int], dtype, device):
        self.kind = kind
        self.n = n_coordinates(kind, shape, freq_dims)
        if kind == "dct":
            c, h, w = shape
            self.fh, self.fw = (h, w) if freq_dims is None else (min(freq_dims, h), min(freq_dims, w))
            self.dh = dct_matrix(h, dtype=dtype, device=device)
            self.dw = dct_matrix(w, dtype=dtype, device=device)

    def direction(self, q: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Unit basis vectors (one per row) for coordinate indices ``q``, shaped like ``like``."""
        out = torch.zeros_like(like)
        rows = torch.arange(len(q), device=q.device)
        if self.kind == "pixel":
            out.view(len(q), -1)[rows, q] = 1.0
        else:
            per_channel = self.fh * self.fw
            ch, rest = q // per_channel, q % per_channel
            u, v = rest // self.fw, rest % self.fw
            out[rows, ch] = self.dh[u][:, :, None] * self.dw[v][:, None, :]
        return out


@dataclass
class SimBAResult:
    x_adv: torch.Tensor          # (N, C, H, W) final adversarial inputs
    success: torch.Tensor        # (N,) bool: top-1 differs from the label at the end
    queries: torch.Tensor        # (N,) int64, counted as the reference does
    iterations: torch.Tensor     # (N,) int64 iterations run
    saturated: torch.Tensor      # (N,) bool: starting true-class probability exactly 1.0
    n_coords: int
    max_iters: int
    score_trace: Optional[torch.Tensor] = None   # (N, max_iters+1) score after each iteration


def _query(model: nn.Module, x: torch.Tensor, y: torch.Tensor, score: str) -> Tuple[torch.Tensor, torch.Tensor,
                                                                                      torch.Tensor]:
    """The black-box view of one batch: (score in float64, top-1, logits at least in float32)."""
    logits = model(x)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    pred = logits.argmax(1)
    if score == "prob":
        value = torch.softmax(logits, dim=1).gather(1, y[:, None])[:, 0].double()
    else:
        z = logits.double()
        others = z.scatter(1, y[:, None], float("-inf"))
        value = z.gather(1, y[:, None])[:, 0] - torch.logsumexp(others, dim=1)
    return value, pred, logits


def prob_saturated(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True where the true-class probability, in the logits' precision, is exactly 1.0."""
    return torch.softmax(logits, dim=1).gather(1, y[:, None])[:, 0] == 1.0


@torch.no_grad()
def simba_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: float = 0.2,
                 max_iters: Optional[int] = None, basis: str = "pixel", linf_bound: Optional[float] = None,
                 freq_dims: Optional[int] = None, batch_size: int = 50, score: str = "log_odds",
                 generator: Optional[torch.Generator] = None, orders: Optional[torch.Tensor] = None,
                 record_scores: bool = False, step_rule: str = "minus_first") -> SimBAResult:
    """Attack every image of ``x`` (float in [0,1]) with labels ``y``.

    ``orders`` (N, >= max_iters) gives each image's coordinate order; without
    it, image i's order is ``torch.randperm(n_coords, generator=generator)``,
    drawn for i = 0, 1, ... in turn. ``record_scores`` keeps each image's score
    after every iteration (NaN once it has stopped). ``step_rule``: see the
    module docstring."""
    if score not in SCORES:
        raise ValueError(f"simba: score must be one of {', '.join(map(repr, SCORES))}, got {score!r}")
    if step_rule not in STEP_RULES:
        raise ValueError(f"simba: step_rule must be one of {', '.join(map(repr, STEP_RULES))}, got {step_rule!r}")
    n_img = x.shape[0]
    device, dtype = x.device, x.dtype
    space = Basis(basis, tuple(x.shape[1:]), freq_dims=freq_dims, dtype=dtype, device=device)
    cap = space.n if max_iters is None else int(max_iters)
    if cap > space.n:
        raise ValueError(f"simba: max_iters {cap} exceeds the number of coordinates {space.n}")
    if orders is not None and (orders.shape[0] != n_img or orders.shape[1] < cap):
        raise ValueError(f"simba: orders must have shape ({n_img}, >= {cap}), got {tuple(orders.shape)}")
    if generator is None and orders is None:
        generator = torch.Generator().manual_seed(0)

    x_adv = x.detach().clone()
    success = torch.zeros(n_img, dtype=torch.bool, device=device)
    saturated = torch.zeros(n_img, dtype=torch.bool, device=device)
    queries = torch.zeros(n_img, dtype=torch.long, device=device)
    iterations = torch.zeros(n_img, dtype=torch.long, device=device)
    trace = torch.full((n_img, cap + 1), float("nan"), dtype=torch.float64, device=device) if record_scores else None

    def adversarial(x0, delta):
        # every queried input is made here, in one memory layout: the same input, the same bits
        if linf_bound is not None:
            delta = delta.clamp(-linf_bound, linf_bound)
        return (x0 + delta).clamp(0, 1).contiguous()

    def moved(candidate, current_input):
        """Per image: whether the candidate's input differs from the current one."""
        return (candidate != current_input).flatten(1).any(1)

    # the pool: one row per image under attack
    ids = torch.zeros(0, dtype=torch.long, device=device)
    x0 = x.new_zeros((0,) + tuple(x.shape[1:]))
    yy = y.new_zeros(0)
    delta = torch.zeros_like(x0)
    current = torch.zeros(0, dtype=torch.float64, device=device)
    pred = y.new_zeros(0)
    k = torch.zeros(0, dtype=torch.long, device=device)
    q = torch.zeros(0, dtype=torch.long, device=device)
    order = torch.zeros((0, cap), dtype=torch.long, device=device)
    next_id = 0
    shape = (-1,) + (1,) * (x.dim() - 1)   # a per-image mask, broadcast over an image

    while True:
        _progress.tick(lambda: _progress_words(n_img, next_id, len(ids), cap, k, iterations, queries, q))
        # admit new images into the free slots (one uncounted query each)
        free = batch_size - len(ids)
        if free > 0 and next_id < n_img:
            new = torch.arange(next_id, min(n_img, next_id + free), device=device)
            if orders is not None:
                new_order = orders[next_id:next_id + len(new), :cap].to(device=device, dtype=torch.long)
            else:
                new_order = torch.stack([torch.randperm(space.n, generator=generator)[:cap]
                                         for _ in range(len(new))]).to(device)
            next_id += len(new)
            x_new = x[new].contiguous()
            s_new, pred_new, logits_new = _query(model, adversarial(x_new, torch.zeros_like(x_new)), y[new], score)
            saturated[new] = prob_saturated(logits_new, y[new])
            ids = torch.cat([ids, new])
            x0 = torch.cat([x0, x_new])
            yy = torch.cat([yy, y[new]])
            delta = torch.cat([delta, torch.zeros_like(x_new)])
            current = torch.cat([current, s_new])
            pred = torch.cat([pred, pred_new])
            k = torch.cat([k, torch.zeros_like(new)])
            q = torch.cat([q, torch.zeros_like(new)])
            order = torch.cat([order, new_order])
            if trace is not None:
                trace[new, 0] = s_new

        # success check (free: the logits of the current input are known)
        done = (pred != yy) | (k >= cap)
        if bool(done.any()):
            d = done.nonzero().squeeze(1)
            gone = ids[d]
            success[gone] = pred[d] != yy[d]
            queries[gone] = q[d]
            iterations[gone] = k[d]
            x_adv[gone] = adversarial(x0[d], delta[d])
            keep = (~done).nonzero().squeeze(1)
            ids, x0, yy, delta, current, pred, k, q, order = (
                t[keep] for t in (ids, x0, yy, delta, current, pred, k, q, order))
            if next_id < n_img:
                continue
        if len(ids) == 0:
            break

        # one iteration for every image in the pool
        coord = order.gather(1, k[:, None])[:, 0]
        direction = space.direction(coord, delta) * step
        now = adversarial(x0, delta)
        minus = delta - direction
        x_minus = adversarial(x0, minus)
        s_minus, pred_minus, _ = _query(model, x_minus, yy, score)
        q += 1
        better = (s_minus < current) & moved(x_minus, now)
        if step_rule == "best_of_both":
            plus = delta + direction
            x_plus = adversarial(x0, plus)
            s_plus, pred_plus, _ = _query(model, x_plus, yy, score)
            q += (~better).long()
            take = (s_plus < torch.where(better, s_minus, current)) & moved(x_plus, now)
            use_minus = better & ~take
            delta = torch.where(take.view(shape), plus, torch.where(use_minus.view(shape), minus, delta))
            current = torch.where(take, s_plus, torch.where(use_minus, s_minus, current))
            pred = torch.where(take, pred_plus, torch.where(use_minus, pred_minus, pred))
        else:
            delta = torch.where(better.view(shape), minus, delta)
            current = torch.where(better, s_minus, current)
            pred = torch.where(better, pred_minus, pred)
            rest = (~better).nonzero().squeeze(1)
            if rest.numel():
                plus = delta[rest] + direction[rest]
                x_plus = adversarial(x0[rest], plus)
                s_plus, pred_plus, _ = _query(model, x_plus, yy[rest], score)
                q[rest] += 1
                take = (s_plus < current[rest]) & moved(x_plus, now[rest])
                sel = rest[take]
                delta[sel] = plus[take]
                current[sel] = s_plus[take]
                pred[sel] = pred_plus[take]
        k += 1
        if trace is not None:
            trace[ids, k] = current

    return SimBAResult(x_adv=x_adv, success=success, queries=queries, iterations=iterations, saturated=saturated,
                       n_coords=space.n, max_iters=cap, score_trace=trace)


def _progress_words(n_img, next_id, pooled, cap, k, iterations, queries, q) -> Tuple[float, str]:
    """(fraction of the work done, words) for a progress line: work counted in
    image-iterations, at most ``cap`` per image (an image that succeeds early
    leaves work undone, so the fraction only grows faster than estimated)."""
    in_pool = int(k.sum())
    done = int(iterations.sum()) + in_pool
    left = (n_img - next_id) * cap + pooled * cap - in_pool
    spent = int(queries.sum()) + int(q.sum())
    return done / max(done + left, 1), f"{next_id - pooled} of {n_img} images done, {spent:,} queries"
