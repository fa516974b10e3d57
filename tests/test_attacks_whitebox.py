"""FGSM, PGD, AutoAttack and noise: adversarial inputs stay in the eps-ball and
in [0, 1]; on a linear classifier, whose optimal L_inf attack has a closed
form, FGSM and PGD reach the optimum; restarts and seeding behave."""
import numpy as np
import pytest
import torch
from torch import nn

from attacks import get_evaluator
from attacks.checks import validate_adversarial


EPS = 8 / 255


class Linear2(nn.Module):
    """Two-class linear classifier on flattened inputs, with |w1 - w0| >= 0.02
    per pixel so that the sign of the gradient is never in doubt."""

    def __init__(self, d, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        diff = (torch.rand(d, generator=g) * 0.1 + 0.02) * (torch.randint(0, 2, (d,), generator=g) * 2 - 1)
        w0 = torch.randn(d, generator=g) * 0.05
        self.lin = nn.Linear(d, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.stack([w0, w0 + diff]))
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x.flatten(1))


def _linear_case(n=64, shape=(1, 6, 6), seed=0):
    d = int(np.prod(shape))
    model = Linear2(d, seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((n,) + shape, generator=g)
    # pixels on and near the borders, so that clipping to [0, 1] matters
    x.view(n, -1)[:, :6] = torch.tensor([0.0, 1.0, 0.01, 0.99, 0.5, 0.02])
    with torch.no_grad():
        logits = model(x)
        # centre the bias so that about half are near the decision boundary
        model.lin.bias.copy_(torch.tensor([0.0, -float((logits[:, 1] - logits[:, 0]).median())]))
        y = model(x).argmax(1)
    y[:8] = 1 - y[:8]       # a few misclassified examples
    return model, x, y


def _optimum(model, x, y, eps):
    """Closed form: move each pixel by eps towards the other class, clip to [0, 1]."""
    w = model.lin.weight.detach()
    direction = (w[1 - y] - w[y]).sign().view_as(x)
    return (x + eps * direction).clamp(0, 1)


@pytest.mark.parametrize("spec", [
    {"type": "fgsm"},
    {"type": "pgd", "steps": 10},
    {"type": "pgd", "steps": 20, "eps": "16/255"},
])
def test_linear_classifier_attacks_reach_the_closed_form_optimum(spec):
    model, x, y = _linear_case()
    spec = dict(spec)
    ev = get_evaluator(spec.pop("type"), **spec)
    x_star = _optimum(model, x, y, ev.eps)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x_adv = ev.perturb(model, x, y)
    torch.testing.assert_close(x_adv, x_star, atol=1e-6, rtol=0)
    # and run() reports exactly the closed-form robust outcome
    out = ev.run(model, x, y, generator=torch.Generator().manual_seed(0), batch_size=16)
    with torch.no_grad():
        robust = (model(x_star).argmax(1) == y) & (model(x).argmax(1) == y)
    np.testing.assert_array_equal(out.per_example["correct"], robust.numpy())
    assert 0 < robust.sum() < len(y) - 8, "degenerate case: the attack must break some, not all"
    assert out.metrics["acc"] == pytest.approx(100 * robust.float().mean().item())
    np.testing.assert_allclose(out.per_example["linf"], (x_star - x).flatten(1).abs().amax(1).numpy(), atol=1e-6)


def test_pgd_without_enough_steps_does_not_reach_the_optimum_but_stays_valid():
    # a control for the test above: 1 step of 1/255 from a random start cannot reach eps
    model, x, y = _linear_case()
    ev = get_evaluator("pgd", steps=1, step="1/255")
    x_adv = ev.perturb(model, x, y)
    assert not torch.allclose(x_adv, _optimum(model, x, y, EPS), atol=1e-6)
    assert validate_adversarial(x, x_adv, EPS) == {"nonfinite": 0, "outside_range": 0, "outside_ball": 0}


class SmallConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                 nn.Flatten(), nn.Linear(32, 4))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("spec", [
    {"type": "fgsm", "eps": 0.1},
    {"type": "pgd", "eps": 0.05, "step": 0.02, "steps": 5, "restarts": 2},
    {"type": "noise", "eps": 0.1, "samples": 2},
])
def test_adversarial_inputs_stay_in_the_ball_and_in_range(spec):
    torch.manual_seed(0)
    model = SmallConv().eval()
    x = torch.rand(20, 3, 8, 8)
    x[:, :, 0, :] = 0.0
    x[:, :, 1, :] = 1.0
    y = torch.randint(0, 4, (20,))
    spec = dict(spec)
    ev = get_evaluator(spec.pop("type"), **spec)
    x_adv = ev.perturb(model, x, y)
    assert float((x_adv - x).abs().max()) <= ev.eps + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1 and torch.isfinite(x_adv).all()
    assert float((x_adv - x).abs().max()) > ev.eps / 2          # it did move
    out = ev.run(model, x, y, generator=torch.Generator().manual_seed(0), batch_size=8)
    assert out.info["validity"] == {"nonfinite": 0, "outside_range": 0, "outside_ball": 0}
    assert (out.per_example["linf"] <= ev.eps + 1e-6).all()
    # robust correct implies clean correct
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).numpy()
    assert not (out.per_example["correct"] & ~clean).any()


def test_validate_adversarial_counts_violations():
    x = torch.full((3, 1, 2, 2), 0.5)
    bad = x.clone()
    bad[0, 0, 0, 0] = 0.5 + 2 * EPS          # outside the ball
    bad[1, 0, 0, 0] = float("nan")
    bad[2, 0, 0, 0] = 1.2                    # outside [0, 1] (and the ball)
    counts = validate_adversarial(x, bad, EPS)
    assert counts == {"nonfinite": 1, "outside_range": 1, "outside_ball": 2}


class BreakWith(nn.Module):
    """Correct on every input except where the first pixel exceeds a threshold."""

    def __init__(self, threshold):
        super().__init__()
        self.threshold = threshold
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        hit = (x.flatten(1)[:, 0] > self.threshold).float()
        s = x.flatten(1)[:, 0] * self.scale
        return torch.stack([1 - hit + 0 * s, hit + 0 * s], 1)


def test_restarts_count_an_example_broken_if_any_restart_breaks_it():
    # with noise of +-eps on pixel 0 = 0.5, half of the draws push it above 0.5
    model = BreakWith(0.5).eval()
    x = torch.full((200, 1, 2, 2), 0.5)
    y = torch.zeros(200, dtype=torch.long)
    one = get_evaluator("noise", samples=1).run(model, x, y, generator=torch.Generator().manual_seed(0),
                                               batch_size=64)
    four = get_evaluator("noise", samples=4).run(model, x, y, generator=torch.Generator().manual_seed(0),
                                                batch_size=64)
    assert one.metrics["acc"] == pytest.approx(50, abs=12)
    assert four.metrics["acc"] == pytest.approx(100 / 16, abs=5)


def test_a_misclassified_example_never_counts_as_robust():
    # clean prediction is wrong (pixel 0 = 0.5 is not above 0.5); noise fixes it half the time,
    # but the adversary may keep x itself, so the example stays broken
    model = BreakWith(0.5).eval()
    x = torch.full((100, 1, 2, 2), 0.5)
    y = torch.ones(100, dtype=torch.long)
    out = get_evaluator("noise", samples=3).run(model, x, y, generator=torch.Generator().manual_seed(0),
                                                batch_size=32)
    assert not out.per_example["correct"].any()
    assert 20 < out.per_example["adv_correct"].sum() < 80
    assert out.metrics["adv_acc"] > out.metrics["acc"] == 0


def test_runs_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(0)
    model = SmallConv().eval()
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 4, (16,))
    ev = get_evaluator("pgd", eps=0.1, step=0.02, steps=3)
    state = torch.random.get_rng_state()
    a = ev.run(model, x, y, generator=torch.Generator().manual_seed(1), batch_size=8)
    assert torch.equal(state, torch.random.get_rng_state())
    b = ev.run(model, x, y, generator=torch.Generator().manual_seed(1), batch_size=8)
    c = ev.run(model, x, y, generator=torch.Generator().manual_seed(2), batch_size=8)
    np.testing.assert_array_equal(a.per_example["l2"], b.per_example["l2"])
    assert not np.array_equal(a.per_example["l2"], c.per_example["l2"])


def test_pgd_records_a_rising_loss_curve():
    model, x, y = _linear_case()
    out = get_evaluator("pgd", steps=10).run(model, x, y, generator=torch.Generator().manual_seed(0),
                                             batch_size=16)
    curve = out.info["loss_curve"]
    assert len(curve) == 11 and curve[-1] > curve[0]


def test_autoattack_reaches_the_closed_form_on_a_four_class_linear_classifier():
    torch.manual_seed(3)
    d, k, n = 16, 4, 24
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k)).eval()
    x = torch.rand(n, 1, 4, 4)
    with torch.no_grad():
        model[1].weight.mul_(3)
        y = model(x).argmax(1)
    ev = get_evaluator("autoattack", eps=0.05)
    assert ev.name == "autoattack_eps0p05"
    out = ev.run(model, x, y, generator=torch.Generator().manual_seed(0), batch_size=n)
    assert out.info["validity"] == {"nonfinite": 0, "outside_range": 0, "outside_ball": 0}
    assert out.info["n_classes"] == k
    # closed form: for each other class j the best box corner is x + eps*sign(w_j - w_y), clipped
    w = model[1].weight.detach()
    robust = torch.ones(n, dtype=torch.bool)
    for j in range(k):
        x_j = (x + 0.05 * (w[j] - w[y]).sign().view_as(x)).clamp(0, 1)
        with torch.no_grad():
            z = model(x_j)
        robust &= (j == y) | (z[torch.arange(n), j] < z[torch.arange(n), y])
    assert 0 < robust.sum() < n
    np.testing.assert_array_equal(out.per_example["correct"], robust.numpy())


def test_autoattack_refuses_too_few_classes():
    model, x, y = _linear_case(n=4)
    with pytest.raises(ValueError, match="at least 4 classes"):
        get_evaluator("autoattack").run(model, x, y, generator=torch.Generator(), batch_size=4)
