"""The sanity checks of EVALUATION.md, run automatically by the protocol.

Two levels:

* errors (raise :class:`StateChangedError`): a parameter or buffer of the
  model changed during an attack (hashed before and after each one), or an
  attack left the model out of eval mode. Such a run's numbers mean nothing.
* flags (short strings collected in a list, written on the run's record):
  everything else. Each flag is explained in ``docs/evaluators.md`` and, for
  a given run, in ``EvaluationReport.flag_notes``.

Flag strings (``<name>`` is an evaluator's result name)::

    <name>:outside_eps_ball   an adversarial input left the eps-ball
    <name>:outside_0_1        an adversarial input left [0, 1]
    <name>:nan_input          an adversarial input holds NaN/inf
    <name>>clean              accuracy on the adversarial inputs above clean accuracy
    <pgd>><fgsm>              PGD weaker than FGSM at the same eps (e.g. pgd20>fgsm)
    <more>><fewer>            PGD with more steps weaker (e.g. pgd20>pgd10)
    <big>><small>             accuracy rises with eps (e.g. pgd10_eps16>pgd10)
    <name>:above_chance       at eps >= 0.5 (L_inf) accuracy stays above chance
    <blackbox>><whitebox>     black-box broke examples, inside the white-box eps, that
                              the white-box attack did not (e.g. simba>pgd20)
    <name>:loss_falls         PGD's mean loss is lower after the last step than at the start
    nondeterministic          two identical forwards gave different logits
    zero_grad                 input gradients are exactly zero on >= 5% of examples
    nan_grad                  input gradients hold NaN/inf
    not_logits                the model outputs probabilities (rows >= 0 summing to 1)
    nan_output                the model outputs NaN/inf on clean inputs
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: float tolerance on the eps-ball (x + eps rounds to within a few ulp of 1.0)
EPS_TOL = 1e-6
#: flag zero_grad when at least this fraction of probed examples has a zero input gradient
ZERO_GRAD_FRACTION = 0.05
#: relative tolerance of the determinism probe (scaled by the largest |logit|)
DETERMINISM_RTOL = 1e-5
#: L_inf radius from which accuracy should be near chance (every image can become grey)
LARGE_EPS = 0.5
#: points above the largest class share still tolerated at LARGE_EPS
CHANCE_MARGIN = 5.0


class StateChangedError(RuntimeError):
    """A model's parameters, buffers or train/eval mode changed during an attack."""


# ---------------------------------------------------------------------------
# errors: state fingerprints and eval mode

def _tensor_digest(tensor: torch.Tensor) -> str:
    t = tensor.detach()
    h = hashlib.sha1(f"{t.dtype}|{tuple(t.shape)}|".encode())
    flat = t.reshape(-1).contiguous()
    if flat.numel():
        h.update(flat.view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def state_fingerprint(model: nn.Module) -> Dict[str, str]:
    """A digest of every parameter and buffer (name -> sha1 of its bytes)."""
    out: Dict[str, str] = {}
    for name, p in model.named_parameters():
        out["param:" + name] = _tensor_digest(p)
    for name, b in model.named_buffers():
        out["buffer:" + name] = _tensor_digest(b)
    return out


def training_modules(model: nn.Module) -> List[str]:
    return [name or "(model)" for name, m in model.named_modules() if m.training]


def assert_state_unchanged(before: Dict[str, str], after: Dict[str, str], attack: str) -> None:
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise StateChangedError(
            f"the model's state changed during evaluator '{attack}': {shown}. An attack must not move "
            "running statistics, spectral-norm vectors or cached filters; make the module keep them "
            "fixed in eval mode (or under torch.no_grad), then re-run the evaluation.")


def assert_eval_mode(model: nn.Module, attack: str) -> None:
    still = training_modules(model)
    if still:
        raise StateChangedError(
            f"evaluator '{attack}' left modules in training mode: {', '.join(still[:5])}; "
            "every attack must run the model in eval mode")


# ---------------------------------------------------------------------------
# validity of adversarial inputs (called by the attack wrappers on each batch)

def validate_adversarial(x: torch.Tensor, x_adv: torch.Tensor, eps: Optional[float] = None,
                         norm: str = "Linf", tol: float = EPS_TOL) -> Dict[str, int]:
    """Counts of examples whose adversarial input is outside the eps-ball,
    outside [0, 1], or not finite. ``eps=None`` skips the ball."""
    flat = x_adv.detach().flatten(1)
    finite = torch.isfinite(flat).all(1)
    outside = ((flat < 0) | (flat > 1)).any(1)          # NaN is counted as non-finite only
    counts = {"nonfinite": int((~finite).sum()), "outside_range": int(outside.sum()), "outside_ball": 0}
    if eps is not None:
        delta = (x_adv.detach().double() - x.detach().double()).flatten(1)
        size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
        counts["outside_ball"] = int((size > eps + tol).sum())
    return counts


def add_counts(total: Dict[str, int], more: Dict[str, int]) -> Dict[str, int]:
    for key, value in more.items():
        total[key] = total.get(key, 0) + int(value)
    return total


def validity_flags(name: str, counts: Dict[str, int]) -> List[Tuple[str, str]]:
    out = []
    if counts.get("outside_ball", 0):
        out.append((f"{name}:outside_eps_ball", f"{counts['outside_ball']} adversarial inputs outside the eps-ball"))
    if counts.get("outside_range", 0):
        out.append((f"{name}:outside_0_1", f"{counts['outside_range']} adversarial inputs outside [0, 1]"))
    if counts.get("nonfinite", 0):
        out.append((f"{name}:nan_input", f"{counts['nonfinite']} adversarial inputs hold NaN/inf"))
    return out


# ---------------------------------------------------------------------------
# model probes (run once before the attacks)

def probe_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> List[Tuple[str, str]]:
    """Determinism, gradients and output type on one batch; returns (flag, note) pairs."""
    out: List[Tuple[str, str]] = []
    with torch.no_grad():
        a = model(x)
        b = model(x)
    if not torch.isfinite(a).all():
        out.append(("nan_output", "the model's outputs on clean inputs hold NaN/inf"))
    scale = float(a.detach().abs().max()) if a.numel() and torch.isfinite(a).all() else 1.0
    diff = float((a.double() - b.double()).abs().max()) if a.shape == b.shape else float("inf")
    if not (diff <= DETERMINISM_RTOL * (1.0 + scale)):
        out.append(("nondeterministic",
                    f"two identical forwards differ by {diff:.3g} (largest |logit| {scale:.3g})"))
    if a.shape[1] > 1 and bool(((a >= 0).all())) and torch.allclose(
            a.double().sum(1), torch.ones(a.shape[0], dtype=torch.float64, device=a.device), atol=1e-4):
        out.append(("not_logits", "outputs are non-negative rows summing to 1 (probabilities, not logits)"))

    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        if loss.requires_grad:
            grad = torch.autograd.grad(loss, xg, allow_unused=True)[0]
        else:
            grad = None
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


# ---------------------------------------------------------------------------
# comparisons between evaluators (run once after the attacks)

@dataclass
class Result:
    """One evaluator's outcome, as the comparisons see it."""

    name: str
    type: str
    kind: str
    settings: Dict[str, Any]
    metrics: Dict[str, Any]
    index: np.ndarray                      # test-set index of each example
    per_example: Dict[str, np.ndarray]
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def eps(self) -> Optional[float]:
        return self.settings.get("eps")

    @property
    def norm(self) -> str:
        return self.settings.get("norm", "Linf")


def _common(a: Result, b: Result) -> Tuple[np.ndarray, np.ndarray]:
    _, ia, ib = np.intersect1d(a.index, b.index, assume_unique=True, return_indices=True)
    return ia, ib


def _acc_on_common(a: Result, b: Result) -> Tuple[float, float, int]:
    ia, ib = _common(a, b)
    if len(ia) == 0:
        return float("nan"), float("nan"), 0
    return (100.0 * a.per_example["correct"][ia].mean(), 100.0 * b.per_example["correct"][ib].mean(), len(ia))


#: z-score a paired excess must pass before a comparison between two attacks
#: is flagged: both attacks are random (random starts), so on n examples their
#: accuracies differ by a few examples by chance alone.
COMPARISON_Z = 2.0


def _greater(first: Result, second: Result, tol: float) -> Optional[str]:
    """A note when ``first`` (expected at most as accurate) leaves significantly
    more examples correct than ``second``, on their common examples.

    Paired (McNemar) test: with ``only_first`` the examples first leaves correct
    and second breaks, and ``only_second`` the reverse, flag when
    ``only_first - only_second > max(tol examples, z * sqrt(only_first + only_second))``.
    A stronger attack that loses by one or two examples to random-start noise
    is not flagged; a systematic deficit is."""
    ia, ib = _common(first, second)
    if not len(ia):
        return None
    a = np.asarray(first.per_example["correct"][ia], dtype=bool)
    b = np.asarray(second.per_example["correct"][ib], dtype=bool)
    only_first, only_second = int((a & ~b).sum()), int((~a & b).sum())
    excess = only_first - only_second
    if excess > 0 and excess > max(tol / 100.0 * len(ia), COMPARISON_Z * float(np.sqrt(only_first + only_second))):
        return (f"{first.name} {100.0 * a.mean():.2f}% > {second.name} {100.0 * b.mean():.2f}% on {len(ia)} "
                f"common examples ({only_first} survive only {first.name}, {only_second} only {second.name})")
    return None


_PGD_FAMILY = ("step", "random_start", "restarts", "norm")
_EPS_FAMILY_FREE = ("eps", "eps_text", "step", "step_text")


def comparison_flags(results: Sequence[Result], *, n_classes: Optional[int] = None,
                     class_share: Optional[float] = None, tol: float = 0.0) -> List[Tuple[str, str]]:
    """Flags from comparing evaluators (checks 1-5 and 7 of EVALUATION.md).

    ``class_share`` is the largest class's share (in %) of the evaluated
    examples; ``tol`` a tolerance in accuracy points for the comparisons."""
    out: List[Tuple[str, str]] = []
    by_type: Dict[str, List[Result]] = {}
    for r in results:
        by_type.setdefault(r.type, []).append(r)
    clean = next((r for r in results if r.kind == "clean"), None)
    white = [r for r in results if r.kind == "whitebox"]
    black = [r for r in results if r.kind == "blackbox"]

    # validity of the adversarial inputs, reported by the wrappers
    for r in results:
        out.extend(validity_flags(r.name, r.info.get("validity", {})))

    # 1. robust <= clean (before the adversary may keep x itself: the raw accuracy on x_adv)
    if clean is not None:
        for r in white + black:
            raw = r.per_example.get("adv_correct", r.per_example["correct"])
            ia, ib = _common(r, clean)
            if len(ia):
                acc_r, acc_c = 100.0 * raw[ia].mean(), 100.0 * clean.per_example["correct"][ib].mean()
                if acc_r > acc_c + tol:
                    out.append((f"{r.name}>clean", f"{r.name} {acc_r:.2f}% on its adversarial inputs > "
                                                   f"clean {acc_c:.2f}% on {len(ia)} common examples"))

    # 2. iterative beats single-step; more steps not weaker
    for p in by_type.get("pgd", []):
        for f in by_type.get("fgsm", []):
            if p.eps is not None and f.eps is not None and abs(p.eps - f.eps) < 1e-9 and p.norm == f.norm:
                note = _greater(p, f, tol)
                if note:
                    out.append((f"{p.name}>{f.name}", note))
    pgds = by_type.get("pgd", [])
    for a in pgds:
        for b in pgds:
            same = all(a.settings.get(k) == b.settings.get(k) for k in _PGD_FAMILY)
            if same and a.eps is not None and b.eps is not None and abs(a.eps - b.eps) < 1e-9 \
                    and a.settings.get("steps", 0) > b.settings.get("steps", 0):
                note = _greater(a, b, tol)
                if note:
                    out.append((f"{a.name}>{b.name}", note))

    # 3. monotone in eps within a family (same type and every setting but eps and
    #    the step size, which is usually scaled with eps)
    families: Dict[Tuple, List[Result]] = {}
    for r in white:
        if r.eps is None:
            continue
        key = (r.type,) + tuple(sorted((k, repr(v)) for k, v in r.settings.items()
                                       if k not in _EPS_FAMILY_FREE))
        families.setdefault(key, []).append(r)
    for members in families.values():
        members = sorted(members, key=lambda r: r.eps)
        for small, big in zip(members, members[1:]):
            if big.eps > small.eps + 1e-12:
                note = _greater(big, small, tol)
                if note:
                    out.append((f"{big.name}>{small.name}", note))
    # ... and about chance at a large eps: every image can be moved to the same grey image
    if class_share is not None:
        for r in white:
            if r.eps is not None and r.norm == "Linf" and r.eps >= LARGE_EPS:
                acc = 100.0 * r.per_example["correct"].mean() if len(r.index) else 0.0
                if acc > class_share + CHANCE_MARGIN:
                    out.append((f"{r.name}:above_chance",
                                f"{r.name} keeps {acc:.2f}% at eps {r.eps:g}; the largest class share is "
                                f"{class_share:.2f}% (at eps >= {LARGE_EPS} every input can become the same grey image)"))

    # 4. white-box beats black-box, within the white-box threat model
    for b in black:
        for w in white:
            if w.eps is None or w.type not in ("pgd", "autoattack"):
                continue
            size_key = "linf" if w.norm == "Linf" else "l2"
            if size_key not in b.per_example:
                continue
            ib, iw = _common(b, w)
            if not len(ib):
                continue
            broken_b = ~b.per_example["correct"][ib]
            inside = b.per_example[size_key][ib] <= w.eps + EPS_TOL
            survived_w = w.per_example["correct"][iw]
            count = int((broken_b & inside & survived_w).sum())
            if count:
                out.append((f"{b.name}>{w.name}",
                            f"{b.name} broke {count} examples inside {w.name}'s eps {w.eps:g} that {w.name} did not"))

    # 5. loss rises along PGD
    for r in by_type.get("pgd", []):
        curve = r.info.get("loss_curve")
        if curve and len(curve) >= 2 and curve[-1] < curve[0]:
            out.append((f"{r.name}:loss_falls",
                        f"{r.name}'s mean loss fell from {curve[0]:.4g} to {curve[-1]:.4g}; check the step size"))
    return out


def worst_case_correct(results: Sequence[Result]) -> Tuple[np.ndarray, np.ndarray]:
    """(index, survived): the examples that every clean/white-box evaluator saw
    (sorted test-set indices) and, per example, whether it survived all of them.
    The worst-case accuracy is the mean of ``survived``, not a minimum of means."""
    chosen = [r for r in results if r.kind in ("clean", "whitebox")]
    if not chosen:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    common = np.sort(chosen[0].index)
    for r in chosen[1:]:
        common = np.intersect1d(common, r.index, assume_unique=True)
    survived = np.ones(len(common), dtype=bool)
    for r in chosen:
        _, _, pos = np.intersect1d(common, r.index, assume_unique=True, return_indices=True)
        survived &= r.per_example["correct"][pos].astype(bool)
    return common, survived
