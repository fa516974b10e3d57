"""Issue 19, items 1-3, on the checks' side: which flags make an evaluation
unreliable, the robust > clean check on the attack's raw outcomes, every
white-box attack held to the noise baseline, and PGD held to AutoAttack's APGD
part (masking), each on a planted model or planted outcomes."""
import numpy as np
import torch
from torch import nn

from attacks import evaluate, register_evaluator
from attacks._perturb import PerturbationEvaluator
from attacks.checks import MASKING_MARGIN, Result, comparison_flags
from robustbench_convnorm.reliability import is_severe, unreliable_flags

EPS = 8 / 255


def _result(name, type_, kind, correct, *, settings=None, **columns):
    correct = np.asarray(correct, bool)
    per_example = {"correct": correct, **{k: np.asarray(v) for k, v in columns.items()}}
    return Result(name=name, type=type_, kind=kind, settings=settings or {}, metrics={},
                  index=np.arange(len(correct)), per_example=per_example, info={})


def _first(k, n):
    return [1] * k + [0] * (n - k)


def _white(name, type_, correct, eps=EPS, **columns):
    settings = {"eps": eps, "norm": "Linf", "steps": 20, "step": 2 / 255, "restarts": 1}
    return _result(name, type_, "whitebox", correct, settings=settings, **columns)


def _flags(results, **kw):
    return [f for f, _ in comparison_flags(results, **kw)]


# ---------------------------------------------------------------------------
# which flags are severe (docs/evaluators.md, "Which flags make an evaluation unreliable")

def test_severe_flags_are_the_ones_that_invalidate_the_numbers():
    # the six flags the quantizing outside model of issue 19 raised, and the other comparisons
    for flag in ("zero_grad", "nondeterministic", "batch_dependent", "nan_grad", "not_logits", "pgd20>clean",
                 "pgd20>pgd10", "pgd10>fgsm", "noise>pgd20", "simba_bounded>pgd20", "pgd20>autoattack",
                 "pgd20>apgd_ce_t", "pgd10_eps16>pgd10", "pgd10:outside_eps_ball", "pgd10_eps0p5:above_chance"):
        assert is_severe(flag), flag
    # warnings about one measurement stay badges
    for flag in ("pgd10:loss_falls", "simba_prob:saturated", "clean:at_chance", "lipschitz-error:RuntimeError",
                 "something_new"):
        assert not is_severe(flag), flag
    assert unreliable_flags(["pgd10:loss_falls", "zero_grad", "zero_grad", "noise>fgsm"]) == ["noise>fgsm",
                                                                                              "zero_grad"]
    assert unreliable_flags(["clean:at_chance"]) == []


class Quantizes(nn.Module):
    """The outside model of issue 19: it rounds its input to a few levels, so
    its input gradient is exactly zero and PGD cannot move."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(3 * 4 * 4, 10)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(self.lin.weight.shape, generator=g))

    def forward(self, x):
        return self.lin((torch.round(x * 4) / 4).flatten(1))


def test_a_quantizing_model_is_unreliable_in_the_report():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 3, 4, 4, generator=g)
    with torch.no_grad():
        y = Quantizes()(x).argmax(1)
    cfg = {"batch_size": 16, "evaluators": [{"type": "clean"}, {"type": "pgd", "eps": 0.05, "step": 0.0125,
                                                                "steps": 5, "name": "pgd5"}]}
    lines = []
    report = evaluate(Quantizes(), x, y, cfg, device="cpu", log=lines.append)
    assert "zero_grad" in report.flags and report.metrics["pgd5_acc"] > 75     # PGD barely moves: "robust"
    assert "zero_grad" in report.protocol["unreliable_flags"]
    assert any("UNRELIABLE" in line and "zero_grad" in line for line in lines)


# ---------------------------------------------------------------------------
# item 3: robust > clean on the attack's raw outcomes

def test_an_attack_that_helps_the_model_is_flagged_on_its_raw_outcomes():
    # 60 of 100 correct clean; the attack makes every prediction right (raw 100%), and
    # "correct clean and under attack" is still 60%: on main nothing compared the raw outcomes
    clean = _result("clean", "clean", "clean", _first(60, 100))
    helping = _white("pgd20", "pgd", _first(60, 100), adv_correct=np.ones(100, bool))
    flags = dict(comparison_flags([clean, helping]))
    assert "pgd20>clean" in flags and "40 stay correct only under pgd20" in flags["pgd20>clean"]
    # a sound attack, whose raw outcomes fix a few wrong answers by chance, stays quiet
    raw = np.array(_first(50, 100), bool)
    raw[60:63] = True
    assert _flags([clean, _white("pgd20", "pgd", _first(50, 100), adv_correct=raw)]) == []


class _Descends(PerturbationEvaluator):
    """A planted broken attack: it steps *down* the loss (towards the true class)."""

    kind = "whitebox"

    def __init__(self, *, eps=0.1, name=None):
        super().__init__(name=name)
        self.eps = eps

    def settings(self):
        return {"eps": self.eps, "norm": "Linf"}

    def perturb(self, model, x, y):
        xg = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xg), y)
        grad, = torch.autograd.grad(loss, xg)
        return (x - self.eps * grad.sign()).clamp(0, 1).detach()


register_evaluator("test_descends_loss")(_Descends)


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(3 * 4 * 4, 4)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(self.lin.weight.shape, generator=g))
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_a_planted_attack_descending_the_loss_is_flagged_robust_above_clean():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(96, 3, 4, 4, generator=g)
    y = torch.randint(0, 4, (96,), generator=g)            # random labels: most clean answers wrong
    cfg = {"batch_size": 32, "evaluators": [{"type": "clean"}, {"type": "test_descends_loss", "eps": 0.3,
                                                                "name": "descends"}]}
    report = evaluate(_Linear(), x, y, cfg, device="cpu", log=lambda s: None)
    assert report.details["descends"]["adv_acc"] > report.metrics["clean_acc"] + 30
    assert "descends>clean" in report.flags and "descends>clean" in report.protocol["unreliable_flags"]


# ---------------------------------------------------------------------------
# item 3: every white-box attack beats the noise baseline

def test_a_whitebox_attack_weaker_than_noise_is_flagged():
    clean = _result("clean", "clean", "clean", [1] * 20)
    noise = _result("noise", "noise", "blackbox", _first(2, 20), linf=np.full(20, EPS), l2=np.full(20, 0.5),
                    settings={"eps": EPS, "norm": "Linf"})
    fgsm = _white("fgsm", "fgsm", _first(12, 20))       # noise breaks 10 that FGSM leaves correct
    flags = dict(comparison_flags([clean, fgsm, noise]))
    assert "noise>fgsm" in flags and "10 stay correct only under fgsm" in flags["noise>fgsm"]
    # FGSM breaking about what noise breaks is fine
    assert _flags([clean, _white("fgsm", "fgsm", _first(3, 20)), noise]) == []
    # noise outside FGSM's ball does not count
    far = _result("noise", "noise", "blackbox", _first(2, 20), linf=np.full(20, 0.3), l2=np.full(20, 0.5),
                  settings={"eps": 0.3, "norm": "Linf"})
    assert _flags([clean, fgsm, far]) == []


# ---------------------------------------------------------------------------
# item 2: PGD held to AutoAttack's APGD part (masking)

def test_pgd_far_above_autoattack_is_flagged_as_masking():
    clean = _result("clean", "clean", "clean", [1] * 100)
    pgd = _white("pgd20", "pgd", _first(60, 100))
    for type_, name in (("apgd_ce_t", "apgd_ce_t"), ("autoattack", "autoattack")):
        strong = _white(name, type_, _first(45, 100))    # breaks 15 more, on the same examples
        flags = dict(comparison_flags([clean, pgd, strong]))
        assert f"pgd20>{name}" in flags and "masking" in flags[f"pgd20>{name}"]
        assert is_severe(f"pgd20>{name}")
    # a gap within the margin (AutoAttack is a few points stronger on sound models) is not masking
    within = int(60 - MASKING_MARGIN + 1)
    assert _flags([clean, pgd, _white("apgd_ce_t", "apgd_ce_t", _first(within, 100))]) == []
    # nor a gap that is not significant on few examples
    small = _result("clean", "clean", "clean", [1] * 10)
    assert _flags([small, _white("pgd20", "pgd", _first(8, 10)), _white("apgd_ce_t", "apgd_ce_t", _first(6, 10))]) == []
    # nor an attack at another eps
    other = _white("apgd_ce_t_eps16", "apgd_ce_t", _first(45, 100), eps=16 / 255)
    assert not any(f.startswith("pgd20>") for f in _flags([clean, pgd, other]))


class _Saturated(nn.Module):
    """A planted model whose PGD is fooled and AutoAttack's APGD part is not: its
    logits are scaled by 1e4, so the softmax of a correct answer is exactly 1 in
    float32 and the cross-entropy gradient PGD follows is exactly zero, while
    APGD-T's DLR loss is scale-free."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(3 * 4 * 4, 5)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(self.lin.weight.shape, generator=g))
            self.lin.bias.zero_()

    def forward(self, x):
        return 1e4 * self.lin(x.flatten(1))


def test_a_model_fooling_pgd_but_not_apgd_is_flagged_by_the_paired_test():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(24, 3, 4, 4, generator=g)
    with torch.no_grad():
        y = _Saturated()(x).argmax(1)                     # clean 100%
    cfg = {"batch_size": 24, "evaluators": [
        {"type": "clean"}, {"type": "pgd", "eps": 0.1, "step": 0.025, "steps": 10, "name": "pgd10"},
        {"type": "apgd_ce_t", "eps": 0.1, "name": "apgd_ce_t"}]}
    report = evaluate(_Saturated(), x, y, cfg, device="cpu", log=lambda s: None)
    m = report.metrics
    assert m["pgd10_acc"] > m["apgd_ce_t_acc"] + 30
    assert "pgd10>apgd_ce_t" in report.flags
    assert "pgd10>apgd_ce_t" in report.protocol["unreliable_flags"]
    # and the per-example worst case, the ranking column, is AutoAttack's part, not PGD's
    assert m["worst_case_whitebox_acc"] <= m["apgd_ce_t_acc"]


def test_the_masking_check_holds_every_pgd_together_not_a_short_one_alone():
    # measured on the quickstart's vanilla model: PGD-10 50.00%, PGD-20 47.50%, APGD-CE+T 44.72%.
    # PGD-10 alone is 5.3 points above APGD, PGD-20 2.8: a short PGD is not masking
    clean = _result("clean", "clean", "clean", [1] * 360)
    pgd10 = _white("pgd10", "pgd", _first(180, 360))
    pgd10.settings["steps"] = 10
    pgd20 = _white("pgd20", "pgd", _first(171, 360))
    apgd = _white("apgd_ce_t", "apgd_ce_t", _first(161, 360))
    assert _flags([clean, pgd10, pgd20, apgd]) == []
    assert "pgd10>apgd_ce_t" in _flags([clean, pgd10, apgd])    # alone, it is held to it
    # the PGDs together far above APGD: named after the longest PGD
    far = _white("apgd_ce_t", "apgd_ce_t", _first(140, 360))
    flags = dict(comparison_flags([clean, pgd10, pgd20, far]))
    assert list(flags) == ["pgd20>apgd_ce_t"] and "pgd10 + pgd20" in flags["pgd20>apgd_ce_t"]
