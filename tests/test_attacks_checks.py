"""The sanity checks of EVALUATION.md: each one fires on a purpose-built bad
model or outcome, and stays quiet on a good one."""
import numpy as np
import pytest
import torch
from torch import nn

from attacks import EvalOutcome, Evaluator, evaluate, register_evaluator
from attacks.checks import Result, StateChangedError, comparison_flags, probe_model, worst_case_correct


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


# ---------------------------------------------------------------------------
# comparisons between evaluators, on hand-made outcomes

def _result(name, type_, kind, correct, *, settings=None, index=None, **columns):
    correct = np.asarray(correct, bool)
    index = np.arange(len(correct)) if index is None else np.asarray(index)
    per_example = {"correct": correct, **{k: np.asarray(v) for k, v in columns.items()}}
    return Result(name=name, type=type_, kind=kind, settings=settings or {}, metrics={},
                  index=index, per_example=per_example, info={})


EPS = 8 / 255
CLEAN = _result("clean", "clean", "clean", [1, 1, 1, 1, 1, 1, 1, 1, 0, 0])


def _pgd(name, correct, steps=10, eps=EPS, **columns):
    return _result(name, "pgd", "whitebox", correct, settings={"eps": eps, "steps": steps, "step": 2 / 255,
                                                               "random_start": True, "restarts": 1,
                                                               "norm": "Linf"}, **columns)


def _fgsm(correct, eps=EPS):
    return _result("fgsm", "fgsm", "whitebox", correct, settings={"eps": eps, "norm": "Linf"})


def _flags(results, **kw):
    return [f for f, _ in comparison_flags(results, **kw)]


# Comparisons between attacks are paired tests: a flag needs the examples that
# only the stronger attack leaves correct to outnumber the reverse by more than
# two standard errors (5 vs 0 passes; 1 vs 0 or 3 vs 1 is random-start noise).
WEAK = [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
SYSTEMATICALLY_LESS_BROKEN = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]   # 5 spared that the weaker attack broke
NOISE = [1, 0, 1, 1, 0, 0, 0, 0, 0, 0]                        # 2 spared, 1 broken: chance


def test_pgd_weaker_than_fgsm_is_flagged():
    fgsm = _fgsm(WEAK)
    assert "pgd10>fgsm" in _flags([CLEAN, fgsm, _pgd("pgd10", SYSTEMATICALLY_LESS_BROKEN)])
    assert _flags([CLEAN, fgsm, _pgd("pgd10", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0])]) == []
    assert _flags([CLEAN, fgsm, _pgd("pgd10", NOISE)]) == []
    # a different eps is not the same threat model
    assert _flags([CLEAN, fgsm, _pgd("pgd10_eps4", SYSTEMATICALLY_LESS_BROKEN, eps=4 / 255)]) == []


def test_more_steps_weaker_is_flagged():
    p10 = _pgd("pgd10", WEAK)
    assert "pgd20>pgd10" in _flags([CLEAN, p10, _pgd("pgd20", SYSTEMATICALLY_LESS_BROKEN, steps=20)])
    assert "pgd20>pgd10" not in _flags([CLEAN, p10, _pgd("pgd20", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0], steps=20)])
    assert "pgd20>pgd10" not in _flags([CLEAN, p10, _pgd("pgd20", NOISE, steps=20)])


def test_accuracy_rising_with_eps_is_flagged():
    small = _pgd("pgd10", WEAK)
    big = _pgd("pgd10_eps16", SYSTEMATICALLY_LESS_BROKEN, eps=16 / 255)
    assert "pgd10_eps16>pgd10" in _flags([CLEAN, small, big])
    assert _flags([CLEAN, small, _pgd("pgd10_eps16", NOISE, eps=16 / 255)]) == []
    big_ok = _pgd("pgd10_eps16", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0], eps=16 / 255)
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
    huge = _pgd("pgd10_eps0p5", [1, 1, 1, 1, 0, 0, 0, 0, 0, 0], eps=0.5)
    assert "pgd10_eps0p5:above_chance" in _flags([CLEAN, huge], class_share=10.0)
    low = _pgd("pgd10_eps0p5", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0], eps=0.5)
    assert _flags([CLEAN, low], class_share=10.0) == []


def test_adversarial_accuracy_above_clean_is_flagged():
    bad = _pgd("pgd10", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0], adv_correct=[1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    assert "pgd10>clean" in _flags([CLEAN, bad])
    good = _pgd("pgd10", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0], adv_correct=[1, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    assert _flags([CLEAN, good]) == []


def test_blackbox_breaking_what_whitebox_missed_is_flagged_within_eps_only():
    pgd = _pgd("pgd20", [1, 1, 1, 0, 0, 0, 0, 0, 0, 0], steps=20)
    # SimBA saw examples 0..3 (index), broke 0 and 1
    inside = _result("simba", "simba", "blackbox", [0, 0, 1, 1], index=[0, 1, 2, 3],
                     linf=[0.01, 0.5, 0.0, 0.0], l2=[0.1, 2.0, 0.0, 0.0], queries=[5, 9, 100, 100])
    assert "simba>pgd20" in _flags([CLEAN, pgd, inside])
    outside = _result("simba", "simba", "blackbox", [0, 0, 1, 1], index=[0, 1, 2, 3],
                      linf=[0.2, 0.5, 0.0, 0.0], l2=[1.0, 2.0, 0.0, 0.0], queries=[5, 9, 100, 100])
    assert _flags([CLEAN, pgd, outside]) == []


def test_falling_pgd_loss_and_invalid_inputs_are_flagged():
    r = _pgd("pgd10", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    r.info["loss_curve"] = [2.0, 1.9, 1.5]
    r.info["validity"] = {"outside_ball": 3, "outside_range": 0, "nonfinite": 1}
    flags = _flags([CLEAN, r])
    assert {"pgd10:loss_falls", "pgd10:outside_eps_ball", "pgd10:nan_input"} <= set(flags)
    assert "pgd10:outside_0_1" not in flags


def test_worst_case_is_per_example_not_a_min_of_means():
    a = _pgd("pgd10", [1, 1, 1, 1, 0, 0, 1, 1, 0, 0])
    b = _fgsm([0, 0, 1, 1, 1, 1, 1, 1, 0, 0])
    index, survived = worst_case_correct([CLEAN, a, b])
    np.testing.assert_array_equal(index, np.arange(10))
    np.testing.assert_array_equal(survived, [0, 0, 1, 1, 0, 0, 1, 1, 0, 0])
    assert survived.mean() == pytest.approx(0.4)           # min of the means would be 0.6
