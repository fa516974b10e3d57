"""The evaluation protocol: seeded, recorded examples drawn without
replacement; SimBA's per-model choice of correctly classified images; the
per-example table; worst-case accuracy per example; config errors."""
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from attacks import EvalOutcome, Evaluator, evaluate, get_evaluator, list_evaluators, register_evaluator
from attacks._perturb import PerturbationEvaluator
from robustbench_convnorm.registry import RegistryError


QUIET = {"log": lambda s: None}


class Tiny(nn.Module):
    def __init__(self, seed=0, classes=4):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(3 * 4 * 4, classes)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(self.lin.weight.shape, generator=g))
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x.flatten(1) - 0.5)


def _data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 4, 4, generator=g) * 255).to(torch.uint8), torch.randint(0, 4, (n,), generator=g)


def test_metrics_table_and_details():
    x, y = _data()
    cfg = {"n_examples": 30, "batch_size": 16, "seed": 3, "evaluators": [
        {"type": "clean"}, {"type": "fgsm"}, {"type": "pgd", "steps": 3},
        {"type": "simba", "n_images": 5, "max_iters": 20}]}
    r = evaluate(Tiny(), x, y, cfg, device="cpu", **QUIET)
    for key in ("clean_acc", "fgsm_acc", "pgd3_acc", "worst_case_acc", "simba_maxiters20_success_rate",
                "simba_maxiters20_avg_queries", "simba_maxiters20_avg_queries_success",
                "simba_maxiters20_median_queries_success", "simba_maxiters20_mean_l2"):
        assert key in r.metrics, key
    t = r.per_example
    assert isinstance(t, pd.DataFrame)
    assert {"index", "clean_correct", "fgsm_correct", "pgd3_correct", "simba_maxiters20_queries",
            "worst_case_correct"} <= set(t.columns)
    assert t["index"].is_unique and t["index"].is_monotonic_increasing
    # the white-box columns cover exactly the recorded examples
    assert sorted(t.loc[t["clean_correct"].notna(), "index"]) == sorted(r.indices.tolist())
    assert len(r.indices) == 30
    assert t["simba_maxiters20_queries"].notna().sum() == 5
    assert r.metrics["clean_acc"] == pytest.approx(100 * t["clean_correct"].dropna().astype(bool).mean())
    d = r.details["simba_maxiters20"]
    assert d["kind"] == "blackbox" and d["max_iters"] == 20 and "curve" in d
    assert r.details["pgd3"]["steps"] == 3 and r.details["pgd3"]["eps"] == pytest.approx(8 / 255)
    assert r.protocol["seed"] == 3 and r.protocol["n_examples"] == 30
    # plain data for the run's record.json and per_example.csv
    json.dumps({"metrics": r.metrics, "evaluations": r.details, "flags": r.flags}, allow_nan=False)
    back = pd.read_csv(io.StringIO(t.to_csv(index=False)))
    assert list(back.columns) == list(t.columns) and len(back) == len(t)


def test_examples_are_seeded_without_replacement_and_recorded():
    x, y = _data()
    cfg = {"n_examples": 20, "batch_size": 8, "seed": 1, "evaluators": [{"type": "clean"}]}
    a = evaluate(Tiny(), x, y, cfg, device="cpu", **QUIET)
    b = evaluate(Tiny(), x, y, cfg, device="cpu", **QUIET)
    c = evaluate(Tiny(), x, y, dict(cfg, seed=2), device="cpu", **QUIET)
    assert len(np.unique(a.indices)) == 20
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    full = evaluate(Tiny(), x, y, dict(cfg, n_examples=None), device="cpu", **QUIET)
    np.testing.assert_array_equal(full.indices, np.arange(len(x)))
    # clean accuracy is computed on exactly those examples
    with torch.no_grad():
        pred = Tiny()(x.float() / 255).argmax(1)
    expected = 100 * (pred[a.indices] == y[a.indices]).float().mean().item()
    assert a.metrics["clean_acc"] == pytest.approx(expected)


def test_simba_attacks_correct_examples_chosen_per_model_along_the_seeded_order():
    x, y = _data(n=80)
    cfg = {"n_examples": 10, "batch_size": 16, "seed": 0,
           "evaluators": [{"type": "simba", "n_images": 12, "max_iters": 5}]}
    picked = {}
    for seed in (0, 1):
        model = Tiny(seed)
        r = evaluate(model, x, y, cfg, device="cpu", **QUIET)
        chosen = r.per_example.loc[r.per_example["simba_maxiters5_queries"].notna(), "index"].to_numpy()
        with torch.no_grad():
            correct = (model(x.float() / 255).argmax(1) == y).numpy()
        assert len(chosen) == 12 and len(np.unique(chosen)) == 12
        assert correct[chosen].all()
        # the first 12 correct ones along the seeded permutation
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).numpy()
        expected = [i for i in order if correct[i]][:12]
        assert sorted(chosen) == sorted(expected)
        assert r.details["simba_maxiters5"]["n_examined"] == list(order).index(expected[-1]) + 1
        picked[seed] = set(chosen)
    assert picked[0] != picked[1]


class BreaksBelow(Evaluator):
    """Fake white-box: breaks the examples whose first pixel is below a threshold."""

    kind = "whitebox"

    def __init__(self, *, below=0.0, above=1.0, name=None):
        super().__init__(name=name)
        self.below, self.above = below, above

    def run(self, model, x, y, *, generator, batch_size):
        first = x.flatten(1)[:, 0].cpu().numpy()
        correct = ~((first < self.below) | (first > self.above))
        return EvalOutcome(per_example={"correct": correct}, metrics={"acc": 100 * correct.mean()},
                           info=self.describe())


register_evaluator("test_breaks_by_pixel")(BreaksBelow)


class EscapesBall(PerturbationEvaluator):
    kind = "whitebox"

    def __init__(self, *, name=None):
        super().__init__(name=name)
        self.eps = 8 / 255

    def perturb(self, model, x, y):
        return (x + 3 * self.eps).clamp(0, 1)


register_evaluator("test_escapes_ball")(EscapesBall)


def test_worst_case_accuracy_is_the_mean_of_per_example_survival():
    x, y = _data(n=50)
    model = Tiny()
    with torch.no_grad():
        y = model(x.float() / 255).argmax(1)            # every example clean-correct
    cfg = {"n_examples": None, "batch_size": 16, "seed": 0, "evaluators": [
        {"type": "clean"}, {"type": "test_breaks_by_pixel", "below": 0.3, "name": "low"},
        {"type": "test_breaks_by_pixel", "above": 0.7, "name": "high"}]}
    r = evaluate(model, x, y, cfg, device="cpu", **QUIET)
    first = x.flatten(1)[:, 0].float().numpy() / 255
    survived = (first >= 0.3) & (first <= 0.7)
    assert r.metrics["worst_case_acc"] == pytest.approx(100 * survived.mean())
    assert r.metrics["worst_case_acc"] < min(r.metrics["low_acc"], r.metrics["high_acc"]) - 1
    np.testing.assert_array_equal(r.per_example["worst_case_correct"].to_numpy(dtype=bool), survived)


class BlackboxBreaksAbove(Evaluator):
    """Fake black-box attack inside an eps-ball: breaks the examples whose first pixel is above a threshold."""

    kind = "blackbox"

    def __init__(self, *, above=1.0, eps=0.1, name=None):
        super().__init__(name=name)
        self.above, self.eps = above, eps

    def settings(self):
        return {"eps": self.eps, "norm": "Linf"}

    def run(self, model, x, y, *, generator, batch_size):
        correct = x.flatten(1)[:, 0].cpu().numpy() <= self.above
        return EvalOutcome(per_example={"correct": correct, "linf": np.full(len(x), self.eps)},
                           metrics={"acc": 100 * correct.mean()}, info=self.describe())


register_evaluator("test_blackbox_breaks_above")(BlackboxBreaksAbove)


def test_worst_case_acc_takes_every_attack_of_the_threat_model():
    x, y = _data(n=60)
    model = Tiny()
    with torch.no_grad():
        y = model(x.float() / 255).argmax(1)            # every example clean-correct
    cfg = {"n_examples": None, "batch_size": 16, "seed": 0, "evaluators": [
        {"type": "clean"}, {"type": "test_breaks_by_pixel", "below": 0.3, "name": "low"},
        {"type": "pgd", "eps": 0.02, "step": 0.01, "steps": 2, "name": "pgd2"},
        {"type": "test_blackbox_breaks_above", "above": 0.7, "eps": 0.02, "name": "black"},
        # a sanity point far outside the threat model, and a black-box attack outside it
        {"type": "pgd", "eps": 0.5, "step": 0.2, "steps": 2, "name": "pgd2_eps0p5"},
        {"type": "test_blackbox_breaks_above", "above": 0.5, "eps": 0.4, "name": "black_big"}]}
    r = evaluate(model, x, y, cfg, device="cpu", **QUIET)
    t = r.per_example
    first = x.flatten(1)[:, 0].float().numpy() / 255
    whitebox = (first >= 0.3) & t["pgd2_correct"].to_numpy(dtype=bool)
    np.testing.assert_array_equal(t["worst_case_whitebox_correct"].to_numpy(dtype=bool), whitebox)
    np.testing.assert_array_equal(t["worst_case_correct"].to_numpy(dtype=bool), whitebox & (first <= 0.7))
    assert r.metrics["worst_case_whitebox_acc"] == pytest.approx(100 * whitebox.mean())
    assert r.metrics["worst_case_acc"] == pytest.approx(100 * (whitebox & (first <= 0.7)).mean())
    assert r.metrics["worst_case_acc"] < r.metrics["worst_case_whitebox_acc"] - 5
    assert r.metrics["pgd2_eps0p5_acc"] < r.metrics["worst_case_acc"]
    assert r.protocol["threat_model"]["eps"] == pytest.approx(0.02)
    assert r.details["black"]["in_threat_model"] and not r.details["black_big"]["in_threat_model"]
    assert not r.details["pgd2_eps0p5"]["in_threat_model"]
    # a threat model given in the config replaces the inferred one
    wide = evaluate(model, x, y, dict(cfg, threat_model={"eps": 0.5, "norm": "Linf"}), device="cpu", **QUIET)
    assert wide.metrics["worst_case_acc"] <= wide.metrics["pgd2_eps0p5_acc"]
    assert wide.protocol["threat_model"]["source"] == "config"


def test_progress_lines_with_rate_and_time_left_when_output_is_redirected(monkeypatch):
    from robustbench_convnorm import progress
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    x, _ = _data()
    with torch.no_grad():
        y = Tiny()(x.float() / 255).argmax(1)
    lines = []
    cfg = {"n_examples": 40, "batch_size": 8, "evaluators": [{"type": "pgd", "steps": 2},
                                                            {"type": "simba", "n_images": 20, "max_iters": 5}]}
    evaluate(Tiny(), x, y, cfg, device="cpu", log=lines.append)
    progress = [s for s in lines if "batches" in s]
    for name, total in (("clean", 5), ("pgd2", 5), ("simba_maxiters5", 3)):
        mine = [s for s in progress if s.startswith(f"[eval] {name}: ")]
        assert len(mine) == total - 1, (name, progress)       # after every batch but the last
        assert f"1 of {total} batches" in mine[0] and "batches/s" in mine[0] and "left" in mine[0]


def test_invalid_adversarial_inputs_become_flags():
    x, y = _data()
    cfg = {"n_examples": 16, "batch_size": 8, "evaluators": [{"type": "test_escapes_ball", "name": "bad"}]}
    r = evaluate(Tiny(), x, y, cfg, device="cpu", **QUIET)
    assert "bad:outside_eps_ball" in r.flags and "bad:outside_eps_ball" in r.flag_notes


def test_runs_are_reproducible_restore_the_mode_and_leave_the_global_rng_alone():
    x, y = _data()
    model = Tiny().train()
    cfg = {"n_examples": 20, "batch_size": 8, "seed": 5,
           "evaluators": [{"type": "pgd", "steps": 2}, {"type": "simba", "n_images": 4, "max_iters": 10}]}
    state = torch.random.get_rng_state()
    a = evaluate(model, x, y, cfg, device="cpu", **QUIET)
    assert torch.equal(state, torch.random.get_rng_state())
    assert model.training
    b = evaluate(model, x, y, cfg, device="cpu", **QUIET)
    assert a.metrics == b.metrics
    pd.testing.assert_frame_equal(a.per_example, b.per_example)


def test_config_errors_are_single_clear_messages():
    x, y = _data(n=8)
    with pytest.raises(RegistryError, match="did you mean 'n_examples'"):
        evaluate(Tiny(), x, y, {"n_example": 4}, device="cpu", **QUIET)
    with pytest.raises(RegistryError, match="did you mean 'simba'"):
        evaluate(Tiny(), x, y, {"evaluators": [{"type": "simbaa"}]}, device="cpu", **QUIET)
    with pytest.raises(RegistryError, match="no option 'stepz'.*did you mean 'step'"):
        get_evaluator("pgd", stepz=3)
    with pytest.raises(ValueError, match="share the result name 'pgd10'"):
        evaluate(Tiny(), x, y, {"evaluators": [{"type": "pgd"}, {"type": "pgd", "step": 2 / 255}]},
                 device="cpu", **QUIET)
    with pytest.raises(ValueError, match="8/255"):
        get_evaluator("fgsm", eps="eight")
    with pytest.raises(ValueError, match="eval.alpha is a significance level"):
        evaluate(Tiny(), x, y, {"alpha": 5}, device="cpu", **QUIET)
    with pytest.raises(ValueError, match="eval.threat_model must be null or"):
        evaluate(Tiny(), x, y, {"threat_model": 0.1}, device="cpu", **QUIET)


def test_registry_and_result_names():
    assert {"clean", "fgsm", "pgd", "simba", "autoattack", "noise"} <= set(list_evaluators())
    names = {
        ("clean", ()): "clean",
        ("fgsm", ()): "fgsm",
        ("pgd", ()): "pgd10",
        ("pgd", (("steps", 20),)): "pgd20",
        ("pgd", (("eps", "16/255"),)): "pgd10_eps16",
        ("pgd", (("eps", 16 / 255), ("steps", 20), ("restarts", 5))): "pgd20_eps16_restarts5",
        ("pgd", (("random_start", False),)): "pgd10_randomstart0",
        ("pgd", (("eps", 0.5),)): "pgd10_eps0p5",
        ("pgd", (("eps", 0.2), ("step", 0.025))): "pgd10_eps0p2_step0p025",
        ("pgd", (("step", "1/255"),)): "pgd10_step1",
        ("fgsm", (("eps", "4/255"),)): "fgsm_eps4",
        ("simba", ()): "simba",
        ("simba", (("basis", "dct"), ("step", 0.4))): "simba_dct_step0p4",
        ("simba", (("n_images", 50),)): "simba",
        ("autoattack", ()): "autoattack",
        ("pgd", (("name", "mine"),)): "mine",
    }
    for (type_, options), expected in names.items():
        assert get_evaluator(type_, **dict(options)).name == expected
    assert get_evaluator("pgd", eps="8/255").eps == pytest.approx(8 / 255)
