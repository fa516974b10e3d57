"""The sanity checks of docs/evaluators.md ("Sanity checks"): each one fires on a purpose-built bad
model or outcome, and stays quiet on a good one."""
import numpy as np
import pytest
import torch
from torch import nn

from attacks import EvalOutcome, Evaluator, evaluate, register_evaluator
from attacks.checks import (Result, StateChangedError, binomial_tail, comparison_flags, infer_threat_model, probe_model,
                            worst_case_correct)


class GoodModel(nn.Module):
    def __init__(self, classes=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.lin = nn.Linear(4 * 4, classes)
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        h = torch.relu(self.conv(x - self.mean))
        return self.lin(nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))


class CountsForwards(GoodModel):
    """Changes a buffer on every forward (as a running filter updated in eval would)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


class ZeroGrad(GoodModel):
    """Quantizes its input: the gradient is exactly zero (gradient masking)."""

    def forward(self, x):
        return super().forward(torch.round(x * 4) / 4)


class Noisy(GoodModel):
    """Adds fresh noise to its logits on every call (randomized defence)."""

    def forward(self, x):
        out = super().forward(x)
        return out + 0.5 * torch.randn_like(out)


class Softmaxed(GoodModel):
    def forward(self, x):
        return torch.softmax(super().forward(x), 1)


class LeavesTrainMode(Evaluator):
    kind = "whitebox"

    def run(self, model, x, y, *, generator, batch_size):
        model.train()
        return EvalOutcome(per_example={"correct": np.ones(len(x), bool)}, metrics={"acc": 100.0})


register_evaluator("test_leaves_train_mode")(LeavesTrainMode)


def _data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 3, 6, 6, generator=g) * 255).to(torch.uint8)
    y = torch.randint(0, 4, (n,), generator=g)
    return x, y


CFG = {"n_examples": 16, "batch_size": 8, "seed": 0, "checks": True,
       "evaluators": [{"type": "clean"}, {"type": "fgsm"}]}


def test_a_good_model_raises_no_model_flag():
    x, y = _data()
    report = evaluate(GoodModel(), x, y, CFG, device="cpu", log=lambda s: None)
    assert not {"nondeterministic", "zero_grad", "nan_grad", "not_logits"} & set(report.flags)


@pytest.mark.parametrize("checks_on", [True, False])
def test_a_buffer_changing_in_forward_is_an_error(checks_on):
    x, y = _data()
    with pytest.raises(StateChangedError, match="calls"):
        evaluate(CountsForwards(), x, y, dict(CFG, checks=checks_on), device="cpu", log=lambda s: None)


def test_an_attack_leaving_train_mode_is_an_error():
    x, y = _data()
    cfg = dict(CFG, evaluators=[{"type": "test_leaves_train_mode"}])
    with pytest.raises(StateChangedError, match="training mode"):
        evaluate(GoodModel(), x, y, cfg, device="cpu", log=lambda s: None)


def test_zero_gradients_are_flagged():
    x, y = _data()
    report = evaluate(ZeroGrad(), x, y, CFG, device="cpu", log=lambda s: None)
    assert "zero_grad" in report.flags
    assert "nondeterministic" not in report.flags


def test_randomness_in_forward_is_flagged():
    x, y = _data()
    report = evaluate(Noisy(), x, y, CFG, device="cpu", log=lambda s: None)
    assert "nondeterministic" in report.flags
    assert "zero_grad" not in report.flags


def test_probability_outputs_are_flagged():
    x, y = _data()
    xf = x[:8].float() / 255
    flags = [f for f, _ in probe_model(Softmaxed().eval(), xf, y[:8])]
    assert "not_logits" in flags
    assert "not_logits" not in [f for f, _ in probe_model(GoodModel().eval(), xf, y[:8])]


class BatchStats(GoodModel):
    """Normalizes with the statistics of its batch even in eval mode (as a
    BatchNorm left in training mode, or frozen the wrong way, does)."""

    def forward(self, x):
        h = torch.relu(self.conv(x - self.mean))
        h = nn.functional.batch_norm(h, None, None, training=True)
        return self.lin(nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))


class DriftingAttribute(GoodModel):
    """Keeps state in a plain tensor attribute (not a buffer) that every forward moves."""

    def __init__(self):
        super().__init__()
        self.shift = torch.zeros(())

    def forward(self, x):
        self.shift = self.shift + 1e-3
        return super().forward(x) + self.shift


class LazyCache(GoodModel):
    """Fills a tensor cache on its first forward and reuses it: no state change."""

    def forward(self, x):
        if getattr(self, "cache", None) is None:
            self.cache = self.lin.weight.detach().sum()
        return super().forward(x) + 0 * self.cache


def test_output_depending_on_the_batch_is_flagged():
    x, y = _data()
    report = evaluate(BatchStats(), x, y, CFG, device="cpu", log=lambda s: None)
    assert "batch_dependent" in report.flags
    assert "one at a time" in report.flag_notes["batch_dependent"]
    assert "batch_dependent" not in evaluate(GoodModel(), x, y, CFG, device="cpu", log=lambda s: None).flags


@pytest.mark.parametrize("checks_on", [True, False])
def test_a_tensor_attribute_drifting_during_an_attack_is_an_error(checks_on):
    x, y = _data()
    with pytest.raises(StateChangedError, match="attr:shift"):
        evaluate(DriftingAttribute(), x, y, dict(CFG, checks=checks_on), device="cpu", log=lambda s: None)
    # a cache that comes into being and then stays put is not a change
    evaluate(LazyCache(), x, y, dict(CFG, checks=checks_on), device="cpu", log=lambda s: None)


class FlipAbove(nn.Module):
    """Class 1 exactly when the first pixel is above 0.5: a healthy model on
    which a random +-eps perturbation fixes misclassified examples at 0.5."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        first = x.flatten(1)[:, 0] * self.scale
        return torch.stack([0.5 - first, first - 0.5], 1) * 10


def test_noise_fixing_misclassified_examples_raises_no_robust_above_clean_flag():
    # half the examples sit at 0.5 with label 1 (misclassified; noise fixes half
    # of them), half at 0.9 (correct; noise cannot move them below 0.5)
    x = torch.full((64, 1, 2, 2), 0.5)
    x[32:, 0, 0, 0] = 0.9
    y = torch.ones(64, dtype=torch.long)
    cfg = {"batch_size": 16, "evaluators": [{"type": "clean"}, {"type": "noise", "eps": 0.1, "name": "noise"}]}
    report = evaluate(FlipAbove(), x, y, cfg, device="cpu", log=lambda s: None)
    assert report.details["noise"]["adv_acc"] > report.metrics["clean_acc"] + 10   # raw accuracy above clean
    assert "noise>clean" not in report.flags


# ---------------------------------------------------------------------------
# comparisons between evaluators, on hand-made outcomes

def _result(name, type_, kind, correct, *, settings=None, index=None, **columns):
    correct = np.asarray(correct, bool)
    index = np.arange(len(correct)) if index is None else np.asarray(index)
    per_example = {"correct": correct, **{k: np.asarray(v) for k, v in columns.items()}}
    return Result(name=name, type=type_, kind=kind, settings=settings or {}, metrics={},
                  index=index, per_example=per_example, info={})


N = 20
EPS = 8 / 255
CLEAN = _result("clean", "clean", "clean", [1] * 16 + [0] * 4)


def _first(k, n=N):
    """The first k examples correct, the rest broken."""
    return [1] * k + [0] * (n - k)


def _pgd(name, correct, steps=10, eps=EPS, step=2 / 255, restarts=1, **columns):
    return _result(name, "pgd", "whitebox", correct, settings={"eps": eps, "steps": steps, "step": step,
                                                               "random_start": True, "restarts": restarts,
                                                               "norm": "Linf"}, **columns)


def _fgsm(correct, eps=EPS):
    return _result("fgsm", "fgsm", "whitebox", correct, settings={"eps": eps, "norm": "Linf"})


def _flags(results, **kw):
    return [f for f, _ in comparison_flags(results, **kw)]


# Comparisons between attacks are paired tests: with a the examples only the
# supposedly stronger attack leaves correct and b the reverse, the flag needs
# P(X >= a | X ~ Bin(a + b, 1/2)) < alpha (0.01): 8 vs 0 (p = 0.004) passes;
# 5 vs 0 (p = 0.03) or 3 vs 1 is random-start noise.
WEAK = _first(2)
SYSTEMATICALLY_LESS_BROKEN = _first(10)                     # 8 spared that the weaker attack broke
BORDERLINE = _first(7)                                      # 5 spared: p = 0.031
NOISE = [1, 0, 1, 1, 1] + [0] * 15                          # 3 spared, 1 broken


def test_pgd_weaker_than_fgsm_is_flagged():
    fgsm = _fgsm(WEAK)
    assert "pgd10>fgsm" in _flags([CLEAN, fgsm, _pgd("pgd10", SYSTEMATICALLY_LESS_BROKEN)])
    assert _flags([CLEAN, fgsm, _pgd("pgd10", _first(1))]) == []
    assert _flags([CLEAN, fgsm, _pgd("pgd10", NOISE)]) == []
    # a different eps is not the same threat model
    assert _flags([CLEAN, fgsm, _pgd("pgd10_eps4", SYSTEMATICALLY_LESS_BROKEN, eps=4 / 255)]) == []


def test_the_paired_test_is_exact_and_its_alpha_configurable():
    fgsm = _fgsm(WEAK)
    borderline = [CLEAN, fgsm, _pgd("pgd10", BORDERLINE)]
    assert _flags(borderline) == []                          # p = 1/32 > 0.01
    assert "pgd10>fgsm" in _flags(borderline, alpha=0.05)
    note = dict(comparison_flags([CLEAN, fgsm, _pgd("pgd10", SYSTEMATICALLY_LESS_BROKEN)]))["pgd10>fgsm"]
    assert "8 stay correct only under pgd10, 0 only under fgsm" in note and "p = 0.0039" in note
    assert binomial_tail(8, 8) == pytest.approx(1 / 256)
    assert binomial_tail(3, 4) == pytest.approx(5 / 16)
    assert binomial_tail(0, 5) == 1.0 and binomial_tail(6, 5) == 0.0


def test_more_steps_weaker_is_flagged():
    p10 = _pgd("pgd10", WEAK)
    assert "pgd20>pgd10" in _flags([CLEAN, p10, _pgd("pgd20", SYSTEMATICALLY_LESS_BROKEN, steps=20)])
    assert "pgd20>pgd10" not in _flags([CLEAN, p10, _pgd("pgd20", _first(1), steps=20)])
    assert "pgd20>pgd10" not in _flags([CLEAN, p10, _pgd("pgd20", NOISE, steps=20)])


def test_more_steps_weaker_is_flagged_whatever_the_step_sizes():
    # PGD-20 with 1/255 steps against PGD-10 with 2/255 steps: same eps, so more steps must not be weaker
    p10 = _pgd("pgd10", WEAK, step=2 / 255)
    p20 = _pgd("pgd20_step1", SYSTEMATICALLY_LESS_BROKEN, steps=20, step=1 / 255)
    p20.settings["step_text"] = "1/255"
    flags = dict(comparison_flags([CLEAN, p10, p20]))
    assert "pgd20_step1>pgd10" in flags
    assert "20 steps of 1/255 against 10 steps of 0.00784" in flags["pgd20_step1>pgd10"]
    # fewer restarts on the side with more steps: not comparable
    p10_restarts = _pgd("pgd10_restarts5", WEAK, restarts=5)
    assert "pgd20_step1>pgd10_restarts5" not in _flags([CLEAN, p10_restarts, p20])


def test_accuracy_rising_with_eps_is_flagged():
    small = _pgd("pgd10", WEAK)
    big = _pgd("pgd10_eps16", SYSTEMATICALLY_LESS_BROKEN, eps=16 / 255)
    assert "pgd10_eps16>pgd10" in _flags([CLEAN, small, big])
    assert _flags([CLEAN, small, _pgd("pgd10_eps16", NOISE, eps=16 / 255)]) == []
    big_ok = _pgd("pgd10_eps16", _first(1), eps=16 / 255)
    assert _flags([CLEAN, small, big_ok]) == []
    # the step size may grow with eps; FGSM's step is its eps
    big.settings["step"] = 4 / 255
    assert "pgd10_eps16>pgd10" in _flags([CLEAN, small, big])
    f8 = _fgsm(WEAK)
    f16 = _result("fgsm_eps16", "fgsm", "whitebox", SYSTEMATICALLY_LESS_BROKEN,
                  settings={"eps": 16 / 255, "step": 16 / 255, "norm": "Linf"})
    f8.settings["step"] = EPS
    assert "fgsm_eps16>fgsm" in _flags([CLEAN, f8, f16])


def test_accuracy_above_chance_at_a_huge_eps_is_flagged():
    huge = _pgd("pgd10_eps0p5", _first(8), eps=0.5)
    assert "pgd10_eps0p5:above_chance" in _flags([CLEAN, huge], class_share=10.0)
    low = _pgd("pgd10_eps0p5", _first(2), eps=0.5)
    assert _flags([CLEAN, low], class_share=10.0) == []


def test_robust_above_clean_compares_what_the_harness_reports():
    # a healthy attack: the raw prediction on x_adv fixes 3 misclassified examples
    # (random perturbations do), but the reported outcome needs clean and adversarial
    # correctness, so it never exceeds clean accuracy
    raw = np.array(_first(10), bool)
    raw[16:19] = True
    healthy = _pgd("noise_like", _first(10), adv_correct=raw)
    assert _flags([CLEAN, healthy]) == []
    # an evaluator that reports misclassified examples as robust is flagged
    lying = _pgd("pgd10", [1] * 20)
    assert "pgd10>clean" not in _flags([CLEAN, lying])     # 4 vs 0: p = 0.06
    big_clean = _result("clean", "clean", "clean", _first(10, 30))
    lying = _pgd("pgd10", _first(20, 30))                  # 10 clean-wrong reported correct
    flags = dict(comparison_flags([big_clean, lying]))
    assert "pgd10>clean" in flags and "10 stay correct only under pgd10" in flags["pgd10>clean"]


def test_blackbox_beating_whitebox_is_a_paired_test_within_eps_only():
    # PGD broke 14 examples SimBA did not; SimBA broke 2 inside eps that PGD did not: chance
    pgd = _pgd("pgd20", _first(4), steps=20)
    simba_correct = np.array([0, 0, 1, 1] + [1] * 16, bool)
    linf = np.where(simba_correct, 0.0, 0.01)
    few = _result("simba", "simba", "blackbox", simba_correct, linf=linf, l2=linf, queries=np.ones(N, int))
    assert _flags([CLEAN, pgd, few]) == []
    # SimBA breaks 10 examples inside eps that PGD leaves correct, PGD none that SimBA misses
    pgd = _pgd("pgd20", _first(12), steps=20)
    simba_correct = np.array(_first(2), bool)
    linf = np.where(simba_correct, 0.0, 0.01)
    many = _result("simba", "simba", "blackbox", simba_correct, linf=linf, l2=linf, queries=np.ones(N, int))
    flags = dict(comparison_flags([CLEAN, pgd, many]))
    assert "simba>pgd20" in flags and "10 stay correct only under pgd20" in flags["simba>pgd20"]
    # the same breaks with perturbations outside the white-box eps do not count
    outside = _result("simba", "simba", "blackbox", simba_correct, linf=np.where(simba_correct, 0.0, 0.2),
                      l2=linf, queries=np.ones(N, int))
    assert _flags([CLEAN, pgd, outside]) == []


def test_falling_pgd_loss_and_invalid_inputs_are_flagged():
    r = _pgd("pgd10", _first(1))
    r.info["loss_curve"] = [2.0, 1.9, 1.5]
    r.info["validity"] = {"outside_ball": 3, "outside_range": 0, "nonfinite": 1}
    flags = _flags([CLEAN, r])
    assert {"pgd10:loss_falls", "pgd10:outside_eps_ball", "pgd10:nan_input"} <= set(flags)
    assert "pgd10:outside_0_1" not in flags


def test_worst_case_is_per_example_not_a_min_of_means():
    a = _pgd("pgd10", [1, 1, 1, 1, 0, 0, 1, 1, 0, 0])
    b = _fgsm([0, 0, 1, 1, 1, 1, 1, 1, 0, 0])
    clean = _result("clean", "clean", "clean", [1] * 8 + [0] * 2)
    index, survived = worst_case_correct([clean, a, b])
    np.testing.assert_array_equal(index, np.arange(10))
    np.testing.assert_array_equal(survived, [0, 0, 1, 1, 0, 0, 1, 1, 0, 0])
    assert survived.mean() == pytest.approx(0.4)           # min of the means would be 0.6


def test_worst_case_counts_blackbox_breaks_inside_the_threat_ball_only():
    clean = _result("clean", "clean", "clean", [1] * 10)
    pgd = _pgd("pgd10", [1] * 8 + [0] * 2, linf=np.full(10, EPS))
    # noise broke 0 and 1 (inside eps); SimBA, on examples 2..5 only, broke 2 inside eps and 3 outside
    noise = _result("noise", "noise", "blackbox", [0, 0] + [1] * 8, linf=np.full(10, EPS),
                    settings={"eps": EPS, "norm": "Linf"})
    simba = _result("simba", "simba", "blackbox", [0, 0, 1, 1], index=[2, 3, 4, 5], linf=[0.01, 0.2, 0, 0],
                    l2=[0.1, 1, 0, 0])
    # a sanity point far outside the threat model breaks everything
    huge = _pgd("pgd10_eps0p5", [0] * 10, eps=0.5, linf=np.full(10, 0.5))
    results = [clean, pgd, noise, simba, huge]
    _, whitebox = worst_case_correct(results, ("Linf", EPS), kinds=("whitebox",))
    np.testing.assert_array_equal(whitebox, [1] * 8 + [0] * 2)
    _, every = worst_case_correct(results, ("Linf", EPS))
    np.testing.assert_array_equal(every, [0, 0, 0] + [1] * 5 + [0] * 2)
    # without a threat model given, the white-box evaluators' commonest eps is it
    assert infer_threat_model(results) == ("Linf", EPS)


def test_a_model_at_chance_on_clean_inputs_is_flagged():
    # The quickstart once recorded a ConvNorm that never trained (10% on 10 classes)
    # as "ok": every robust accuracy equalled the clean one and no check fired.
    untrained = _result("clean", "clean", "clean", _first(2))           # 10% on 20 examples
    assert "clean:at_chance" in _flags([untrained, _pgd("pgd10", _first(2))], class_share=10.0)
    note = dict(comparison_flags([untrained], class_share=10.0))["clean:at_chance"]
    assert "10.00%" in note and "largest class's share 10.00%" in note
    assert "clean:at_chance" not in _flags([CLEAN], class_share=10.0)   # 80%: far above chance
    # the test is exact: 4 of 20 against a 10% share is p = 0.133, 6 of 20 is p = 0.011, 7 of 20 p = 0.0024
    assert "clean:at_chance" in _flags([_result("clean", "clean", "clean", _first(6))], class_share=10.0)
    assert "clean:at_chance" not in _flags([_result("clean", "clean", "clean", _first(7))], class_share=10.0)
