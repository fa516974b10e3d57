"""The certified evaluator, the L2 threat model and the check between them.

On a linear model every quantity is known exactly: the smallest L2
perturbation that changes the prediction of x is min_j (z_y - z_j) /
||w_y - w_j||. The certified radius must equal it (the last-layer margin
bound is exact there), and PGD-L2 and AutoAttack-L2 must reach the same
robust accuracy: both axes meet."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import torchattacks

from robustbench_convnorm.attacks import certified as certified_module
from robustbench_convnorm.attacks import get_evaluator
from robustbench_convnorm.attacks.protocol import evaluate
from robustbench_convnorm.lipschitz.network import NetworkBound, network_bound

DT = torch.float64
D, K = 16, 4


def linear_model(orthonormal=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(K, D, generator=gen, dtype=DT)
    if orthonormal:
        w = torch.linalg.qr(w.T).Q.T.contiguous()       # orthonormal rows: a 1-Lipschitz map
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, K, bias=False)).to(DT)
    model[1].weight.data = w * (1.0 if orthonormal else 3.0)
    return model.eval()


def data(model, n=40, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = 0.4 + 0.2 * torch.rand(n, 1, 4, 4, generator=gen, dtype=DT)    # the L2 balls below stay inside [0, 1]
    y = torch.randint(0, K, (n,), generator=gen)
    with torch.no_grad():
        y = torch.where(torch.rand(n, generator=gen) < 0.8, model(x).argmax(1), y)   # mostly correct
    return x, y


def exact_distance(model, x, y):
    """The smallest L2 perturbation that changes a linear model's prediction (0 when wrong)."""
    w = model[1].weight.detach()
    z = model(x).detach()
    d = torch.full((len(x),), math.inf, dtype=DT)
    for j in range(K):
        gap = (z.gather(1, y[:, None])[:, 0] - z[:, j]) / (w[y] - w[j]).norm(dim=1).clamp(min=1e-300)
        d = torch.where(y != j, torch.minimum(d, gap), d)
    return d.clamp(min=0)


def run(ev, model, x, y, seed=0):
    return ev.run(model, x, y, generator=torch.Generator().manual_seed(seed), batch_size=64)


def test_certified_radius_of_a_one_lipschitz_linear_model_is_its_margin_over_sqrt2():
    model = linear_model()
    x, y = data(model)
    bound = network_bound(model, (1, 4, 4))
    assert bound.value == pytest.approx(1.0, abs=1e-12)
    out = run(get_evaluator("certified"), model, x, y)
    z = model(x).detach()
    top2 = z.topk(2, dim=1).values
    correct = z.argmax(1) == y
    margin = (top2[:, 0] - top2[:, 1])
    expected = torch.where(correct, margin / math.sqrt(2), torch.zeros_like(margin)).numpy()
    np.testing.assert_allclose(out.per_example["radius"], expected, rtol=1e-9, atol=1e-12)
    # and it is the true distance to the decision boundary: a tight certificate
    np.testing.assert_allclose(out.per_example["radius"], exact_distance(model, x, y).numpy(), rtol=1e-9,
                               atol=1e-12)


def test_last_layer_margins_make_the_radius_exact_for_any_linear_model():
    model = linear_model(orthonormal=False)
    x, y = data(model)
    radius = run(get_evaluator("certified"), model, x, y).per_example["radius"]
    np.testing.assert_allclose(radius, exact_distance(model, x, y).numpy(), rtol=1e-9, atol=1e-12)
    # the global bound alone is sound but looser
    b = network_bound(model, (1, 4, 4))
    from robustbench_convnorm.lipschitz.network import certified_radii
    loose, _ = certified_radii(model(x), y, b.value)
    assert (loose.numpy() <= radius + 1e-12).all() and (loose.numpy() < radius - 1e-6).any()


def test_certified_accuracy_at_each_radius_and_in_linf():
    model = linear_model()
    x, y = data(model)
    dist = exact_distance(model, x, y).numpy()
    out = run(get_evaluator("certified", eps=0.05, radii=[0.01, 0.05, 0.2]), model, x, y)
    assert out.metrics["acc"] == pytest.approx(100 * np.mean(dist > 0.05))
    assert [c[1] for c in out.info["curve"]] == pytest.approx([100 * np.mean(dist > r) for r in (0.01, 0.05, 0.2)])
    linf = run(get_evaluator("certified", eps=0.01, norm="Linf"), model, x, y)
    assert linf.info["l2_radius"] == pytest.approx(0.01 * math.sqrt(D))       # sqrt(d) * eps
    assert linf.metrics["acc"] == pytest.approx(100 * np.mean(dist > 0.04))
    assert get_evaluator("certified", eps=72 / 255).name == "certified_eps72"


def test_an_unboundable_model_certifies_nothing_and_says_why():
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, K), nn.Hardshrink()).to(DT).eval()
    x, y = data(linear_model())
    out = run(get_evaluator("certified", eps=0.0), model, x, y)
    assert out.metrics["acc"] == 0.0 and not out.info["bound_sound"]
    assert any("Hardshrink" in w for w in out.info["bound_warnings"])


@pytest.mark.parametrize("kind", ["pgd", "autoattack"])
def test_l2_attacks_stay_in_the_ball_and_reach_the_exact_robust_accuracy(kind):
    model = linear_model(orthonormal=False)
    x, y = data(model)
    eps = 0.25
    opts = dict(eps=eps, norm="L2")
    ev = get_evaluator("pgd", steps=20, step=0.05, **opts) if kind == "pgd" else \
        get_evaluator("autoattack", version="fast", **opts)
    out = run(ev, model, x, y)
    assert out.info["validity"].get("outside_ball", 0) == 0
    assert (out.per_example["l2"] <= eps + 1e-6).all()
    exact = 100 * np.mean(exact_distance(model, x, y).numpy() > eps)
    assert out.metrics["acc"] == pytest.approx(exact)
    assert ev.describe()["norm"] == "L2"
    if kind == "pgd":
        # torchattacks' own PGDL2 (no random start: deterministic) gives the same outcomes
        plain = get_evaluator("pgd", steps=20, step=0.05, random_start=False, **opts)
        own = torchattacks.PGDL2(model, eps=eps, alpha=0.05, steps=20, random_start=False)
        x_adv = own(x, y)
        with torch.no_grad():
            ok = (model(x_adv).argmax(1) == y).numpy() & (model(x).argmax(1) == y).numpy()
        np.testing.assert_array_equal(run(plain, model, x, y).per_example["correct"], ok)
        assert ev.name == "pgd20_eps0p25_step0p05_normL2"
    else:
        own = torchattacks.AutoAttack(model, norm="L2", eps=eps, version="standard", n_classes=K, seed=0)
        x_adv = own(x, y)
        with torch.no_grad():
            ok = (model(x_adv).argmax(1) == y).numpy() & (model(x).argmax(1) == y).numpy()
        assert out.metrics["acc"] <= 100 * ok.mean() + 1e-9


def _protocol(model, x, y, eps):
    cfg = {"seed": 0, "batch_size": 64, "evaluators": [
        {"type": "clean"}, {"type": "certified", "eps": eps},
        {"type": "pgd", "eps": eps, "step": eps / 4, "steps": 20, "norm": "L2"}]}
    return evaluate(model, x, y, cfg, device="cpu", log=lambda *_: None)


def test_a_planted_wrong_bound_raises_certified_broken_and_the_true_one_does_not(monkeypatch):
    model = linear_model(orthonormal=False)
    x, y = data(model, n=64)
    honest = _protocol(model, x, y, 0.25)
    assert not any(f.endswith(":broken") for f in honest.flags), honest.flags
    # certified accuracy never above the robust accuracy at the same radius
    assert honest.metrics["certified_eps0p25_acc"] <= honest.metrics["pgd20_eps0p25_step0p0625_normL2_acc"]

    true = network_bound

    def wrong(m, shape):
        b = true(m, shape)
        return NetworkBound(value=b.value / 20, features=None, final_weight=None)   # 20x too small

    monkeypatch.setattr(certified_module, "network_bound", wrong)
    monkeypatch.setattr(certified_module, "_BOUNDS", __import__("weakref").WeakKeyDictionary())
    planted = _protocol(model, x, y, 0.25)
    assert "certified_eps0p25:broken" in planted.flags
    note = planted.flag_notes["certified_eps0p25:broken"]
    assert "pgd20" in note and "radius" in note
    # the per-example table holds the radii like any evaluator's columns
    assert "certified_eps0p25_radius" in planted.per_example.columns
