"""The shipped configs' evaluator lists give every affordable sanity check
something to compare: a check that needs an evaluator nobody runs can never
fire."""
from pathlib import Path

import pytest
import yaml

from attacks.base import as_float
from attacks.checks import APGD_TYPES, LARGE_EPS
from attacks.protocol import build_evaluators

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _load(name):
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    return cfg, build_evaluators(cfg["eval"]["evaluators"])


def _close(a, b):
    return a is not None and b is not None and abs(a - b) < 1e-9


@pytest.mark.parametrize("name", ["quickstart", "pgd", "cifar10_small"])
def test_shipped_adversarial_configs_exercise_every_affordable_check(name):
    cfg, evaluators = _load(name)
    eps = as_float(cfg["train"]["eps"], "train.eps")
    pgds = [e for e in evaluators if e.type == "pgd"]
    at_eps = [e for e in pgds if _close(e.eps, eps)]
    # iterative beats single-step; more steps are not weaker
    assert any(e.type == "fgsm" and _close(e.eps, eps) for e in evaluators) and at_eps
    assert len({e.steps for e in at_eps}) >= 2
    # white-box beats black-box: noise at the threat model's eps, SimBA bounded inside it
    assert any(e.type == "noise" and _close(e.eps, eps) for e in evaluators)
    assert any(e.type == "simba" and e.linf_bound is not None and e.linf_bound <= eps + 1e-9 for e in evaluators)
    # accuracy near chance at a large eps, from a PGD of the same family as one at the
    # threat model's eps (so the monotone-in-eps check compares them)
    large = [e for e in pgds if e.eps >= LARGE_EPS]
    assert any((b.steps, b.random_start, b.restarts) == (p.steps, p.random_start, p.restarts)
               for b in large for p in at_eps)
    # PGD is held to AutoAttack (or its APGD-CE + APGD-T part) at the threat model's eps: the masking check
    assert any(e.type in APGD_TYPES and _close(e.eps, eps) for e in evaluators)
    # the model probes and the comparisons run
    assert cfg["eval"].get("checks", True)


AUTOATTACK_CONFIGS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("name", AUTOATTACK_CONFIGS)
def test_every_shipped_config_runs_autoattack_named_for_what_it_is(name):
    """Standard AutoAttack where it fits (the GPU configs), its APGD-CE + APGD-T part
    under its own name in the CPU-sized ones (issue 19, item 2)."""
    cfg, evaluators = _load(name)
    strong = [e for e in evaluators if e.type in APGD_TYPES]
    assert strong, f"{name}.yaml runs no AutoAttack"
    cpu_sized = name in ("quickstart", "cifar10_small", "lipschitz_layers", "cifar10_budget")
    for e in strong:
        if cpu_sized:
            assert e.type == "apgd_ce_t" and e.name.startswith("apgd_ce_t") and "version" not in e.settings()
        else:
            assert e.type == "autoattack" and e.version == "standard" and e.name == "autoattack"
        # at the threat model's eps: the training eps of adversarially trained runs, else the
        # commonest eps of the config's L-inf PGDs, else 8/255
        train = cfg.get("train") or {}
        pgd_eps = [p.eps for p in evaluators if p.type == "pgd" and getattr(p, "norm", "Linf") == "Linf"]
        if train.get("eps") is not None and train.get("method", "natural") != "natural":
            want = as_float(train["eps"], "train.eps")
        else:
            want = max(pgd_eps, key=pgd_eps.count) if pgd_eps else 8 / 255
        assert _close(e.eps, want)


def test_table2_runs_both_simba_scores_on_the_same_settings():
    _, evaluators = _load("simba")
    simba = {e.name: e for e in evaluators if e.type == "simba"}
    assert set(simba) == {"simba", "simba_prob"}
    assert simba["simba"].score == "log_odds" and simba["simba_prob"].score == "prob"
    same = ("basis", "step", "max_iters", "linf_bound", "n_images")
    assert [getattr(simba["simba"], k) for k in same] == [getattr(simba["simba_prob"], k) for k in same]
    assert simba["simba"].step == 0.4 and simba["simba"].n_images == 1000
