"""SimBA (Guo et al., ICML 2019), batched: a black-box attack that sees only the
model's softmax probabilities.

For each image, a random order over the coordinates of a basis (pixels, or
the full-image orthonormal 2-D DCT of each channel) is drawn. Iteration k
takes the k-th coordinate q of the image's order and tries ``delta - step*q``;
it is accepted if the true-class probability drops, else ``delta + step*q`` is
tried and accepted if the probability drops; otherwise delta stays. Queries
are counted as the reference does: 1 for an iteration whose minus step is
accepted, else 2. Before each iteration the image is checked for success
(top-1 no longer the true class); that check is not counted, and a
successful image stops. The number of iterations is capped (by default at
the number of coordinates). The adversarial input is ``clamp(x + delta, 0, 1)``,
with delta first clipped to ``[-linf_bound, linf_bound]`` when a bound is set.

Batched: a pool of up to ``batch_size`` images is attacked at once on the
model's device; an image that succeeds or reaches the cap leaves the pool and
the next image enters, so the pool stays full. Each image has its own
coordinate order, drawn from the generator in image order, so the outcome
does not depend on the batch size. The success check reuses the
probabilities of the last accepted (or initial) query, so it costs no extra
forward; each image's initial probabilities take one uncounted forward, as
in the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from . import checks
from .base import EvalOutcome, Evaluator, as_choice, as_float, as_int, fraction_text
from .registry import register_evaluator

DEFAULTS = {"basis": "pixel", "step": 0.2, "max_iters": None, "linf_bound": None, "freq_dims": None,
            "n_images": 1000}


def dct_matrix(n: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (row k = k-th cosine): coefficients c = D x,
    x = D^T c; a 2-D image X has coefficients D_h X D_w^T."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] = d[0] / math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


class Basis:
    """Coordinates of the search space and how a step along one changes delta."""

    def __init__(self, kind: str, shape, *, freq_dims: Optional[int], dtype, device):
        self.kind = kind
        if kind == "pixel":
            self.n = int(np.prod(shape))
        else:
            if len(shape) != 3:
                raise ValueError(f"simba: the DCT basis needs (C, H, W) images, got shape {tuple(shape)}")
            c, h, w = shape
            fh, fw = (h, w) if freq_dims is None else (min(freq_dims, h), min(freq_dims, w))
            self.fh, self.fw = fh, fw
            self.n = c * fh * fw
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
    n_coords: int
    max_iters: int
    prob_trace: Optional[torch.Tensor] = None   # (N, max_iters+1) true-class prob after each iteration


def _true_prob(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The black-box view: the true class's softmax probability (float64 for
    storage; computed in the model's precision, at least fp32) and the top-1."""
    logits = model(x)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    probs = torch.softmax(logits, dim=1)
    return probs.gather(1, y[:, None])[:, 0].double(), probs.argmax(1)


@torch.no_grad()
def simba_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: float = 0.2,
                 max_iters: Optional[int] = None, basis: str = "pixel", linf_bound: Optional[float] = None,
                 freq_dims: Optional[int] = None, batch_size: int = 50,
                 generator: Optional[torch.Generator] = None, orders: Optional[torch.Tensor] = None,
                 record_probs: bool = False) -> SimBAResult:
    """Attack every image of ``x`` (float in [0,1]) with labels ``y``.

    ``orders`` (N, >= max_iters) gives each image's coordinate order; without
    it, image i's order is ``torch.randperm(n_coords, generator=generator)``,
    drawn for i = 0, 1, ... in turn. ``record_probs`` keeps the true-class
    probability after every iteration (NaN once an image has stopped)."""
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
    queries = torch.zeros(n_img, dtype=torch.long, device=device)
    iterations = torch.zeros(n_img, dtype=torch.long, device=device)
    trace = torch.full((n_img, cap + 1), float("nan"), dtype=torch.float64, device=device) if record_probs else None

    def adversarial(x0, delta):
        if linf_bound is not None:
            delta = delta.clamp(-linf_bound, linf_bound)
        return (x0 + delta).clamp(0, 1)

    # the pool: one row per image under attack
    ids = torch.zeros(0, dtype=torch.long, device=device)
    x0 = x.new_zeros((0,) + tuple(x.shape[1:]))
    yy = y.new_zeros(0)
    delta = torch.zeros_like(x0)
    prob = torch.zeros(0, dtype=torch.float64, device=device)
    pred = y.new_zeros(0)
    k = torch.zeros(0, dtype=torch.long, device=device)
    q = torch.zeros(0, dtype=torch.long, device=device)
    order = torch.zeros((0, cap), dtype=torch.long, device=device)
    next_id = 0

    while True:
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
            p_new, pred_new = _true_prob(model, x[new], y[new])
            ids = torch.cat([ids, new])
            x0 = torch.cat([x0, x[new]])
            yy = torch.cat([yy, y[new]])
            delta = torch.cat([delta, torch.zeros_like(x[new])])
            prob = torch.cat([prob, p_new])
            pred = torch.cat([pred, pred_new])
            k = torch.cat([k, torch.zeros_like(new)])
            q = torch.cat([q, torch.zeros_like(new)])
            order = torch.cat([order, new_order])
            if trace is not None:
                trace[new, 0] = p_new

        # success check (free: the probabilities of the current input are known)
        done = (pred != yy) | (k >= cap)
        if bool(done.any()):
            d = done.nonzero().squeeze(1)
            gone = ids[d]
            success[gone] = pred[d] != yy[d]
            queries[gone] = q[d]
            iterations[gone] = k[d]
            x_adv[gone] = adversarial(x0[d], delta[d])
            keep = (~done).nonzero().squeeze(1)
            ids, x0, yy, delta, prob, pred, k, q, order = (
                t[keep] for t in (ids, x0, yy, delta, prob, pred, k, q, order))
            if next_id < n_img:
                continue
        if len(ids) == 0:
            break

        # one iteration for every image in the pool
        coord = order.gather(1, k[:, None])[:, 0]
        direction = space.direction(coord, delta) * step
        minus = delta - direction
        p_minus, pred_minus = _true_prob(model, adversarial(x0, minus), yy)
        q += 1
        better = p_minus < prob
        delta = torch.where(better.view((-1,) + (1,) * (delta.dim() - 1)), minus, delta)
        prob = torch.where(better, p_minus, prob)
        pred = torch.where(better, pred_minus, pred)
        rest = (~better).nonzero().squeeze(1)
        if rest.numel():
            plus = delta[rest] + direction[rest]
            p_plus, pred_plus = _true_prob(model, adversarial(x0[rest], plus), yy[rest])
            q[rest] += 1
            take = p_plus < prob[rest]
            sel = rest[take]
            delta[sel] = plus[take]
            prob[sel] = p_plus[take]
            pred[sel] = pred_plus[take]
        k += 1
        if trace is not None:
            trace[ids, k] = prob

    return SimBAResult(x_adv=x_adv, success=success, queries=queries, iterations=iterations,
                       n_coords=space.n, max_iters=cap, prob_trace=trace)


def success_curve(queries: np.ndarray, success: np.ndarray, max_queries: int, points: int = 101) -> Dict[str, list]:
    """Cumulative success rate (% of all attacked images broken within q queries)."""
    grid = np.unique(np.linspace(0, max(1, max_queries), points).round().astype(np.int64))
    n = max(1, len(queries))
    broken_at = np.sort(queries[success])
    rate = 100.0 * np.searchsorted(broken_at, grid, side="right") / n
    return {"queries": grid.tolist(), "success_rate": [float(r) for r in rate]}


def summarize(queries: np.ndarray, success: np.ndarray, l2: np.ndarray, linf: np.ndarray) -> Dict[str, object]:
    n = len(queries)
    won = success.astype(bool)

    def mean_or_none(values):
        return float(np.mean(values)) if len(values) else None

    return {
        "n_images": int(n),
        "success_rate": float(100.0 * won.mean()) if n else None,
        "avg_queries": mean_or_none(queries),
        "avg_queries_success": mean_or_none(queries[won]),
        "median_queries_success": float(np.median(queries[won])) if won.any() else None,
        "mean_l2": mean_or_none(l2[won]),
        "mean_linf": mean_or_none(linf[won]),
    }


@register_evaluator("simba")
class SimBA(Evaluator):
    """Options: ``basis`` ("pixel" | "dct"), ``step`` (0.2), ``max_iters`` (None = number of
    coordinates), ``linf_bound`` (None = unbounded), ``freq_dims`` (DCT only: keep the lowest
    freq_dims x freq_dims frequencies; None = all), ``n_images`` (1000 correctly classified
    images, picked by the protocol), ``batch_size`` (None = the protocol's).
    Name ``simba`` / ``simba_dct`` plus non-default options (``simba_step0p4``); n_images and
    batch_size do not enter the name."""

    kind = "blackbox"
    select_correct = True
    headline = ("success_rate", "avg_queries", "avg_queries_success", "median_queries_success",
                "mean_l2", "mean_linf")

    def __init__(self, *, basis=DEFAULTS["basis"], step=DEFAULTS["step"], max_iters=DEFAULTS["max_iters"],
                 linf_bound=DEFAULTS["linf_bound"], freq_dims=DEFAULTS["freq_dims"],
                 n_images=DEFAULTS["n_images"], batch_size: Optional[int] = None, name: Optional[str] = None):
        super().__init__(name=name)
        self.basis = as_choice(basis, "simba: basis", ("pixel", "dct"))
        self.step = as_float(step, "simba: step")
        if self.step <= 0:
            raise ValueError(f"simba: step must be > 0, got {self.step}")
        self.max_iters = None if max_iters is None else as_int(max_iters, "simba: max_iters")
        self.linf_bound = None if linf_bound is None else as_float(linf_bound, "simba: linf_bound")
        if self.linf_bound is not None and self.linf_bound <= 0:
            raise ValueError(f"simba: linf_bound must be > 0 (or null for none), got {self.linf_bound}")
        self.eps = self.linf_bound
        if freq_dims is not None and self.basis != "dct":
            raise ValueError("simba: freq_dims applies to basis 'dct' only")
        self.freq_dims = None if freq_dims is None else as_int(freq_dims, "simba: freq_dims")
        self.n_images = None if n_images is None else as_int(n_images, "simba: n_images")
        self.batch_size = None if batch_size is None else as_int(batch_size, "simba: batch_size")
        self._resolved: Dict[str, int] = {}

    def base_name(self):
        return "simba" if self.basis == "pixel" else "simba_dct"

    def name_options(self):
        return [("step", self.step, DEFAULTS["step"], ""), ("max_iters", self.max_iters, None, ""),
                ("linf_bound", self.linf_bound, None, "pixel"), ("freq_dims", self.freq_dims, None, "")]

    def settings(self):
        return {"basis": self.basis, "step": self.step, "max_iters": self._resolved.get("max_iters", self.max_iters),
                "n_coords": self._resolved.get("n_coords"), "linf_bound": self.linf_bound,
                "linf_bound_text": fraction_text(self.linf_bound), "freq_dims": self.freq_dims,
                "n_images": self.n_images, "norm": "Linf" if self.linf_bound is not None else None,
                "eps": self.linf_bound, "score": "softmax probability of the true class",
                "order": "one random coordinate order per image"}

    def run(self, model, x, y, *, generator, batch_size) -> EvalOutcome:
        result = simba_attack(model, x, y, step=self.step, max_iters=self.max_iters, basis=self.basis,
                              linf_bound=self.linf_bound, freq_dims=self.freq_dims,
                              batch_size=self.batch_size or batch_size, generator=generator)
        self._resolved = {"max_iters": result.max_iters, "n_coords": result.n_coords}
        validity = checks.validate_adversarial(x, result.x_adv, self.linf_bound, "Linf")
        delta = (result.x_adv.double() - x.double()).flatten(1)
        success = result.success.cpu().numpy()
        queries = result.queries.cpu().numpy()
        l2 = delta.norm(dim=1).cpu().numpy()
        linf = delta.abs().amax(1).cpu().numpy() if len(delta) else np.zeros(0)
        per_example = {"correct": ~success, "queries": queries, "l2": l2, "linf": linf}
        metrics = summarize(queries, success, l2, linf)
        info = dict(self.describe(), validity=validity,
                    iterations_total=int(result.iterations.sum()),
                    curve=success_curve(queries, success, 2 * result.max_iters))
        return EvalOutcome(per_example=per_example, metrics=metrics, info=info)
