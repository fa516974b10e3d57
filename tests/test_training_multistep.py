"""PGD adversarial training and TRADES (training/multistep.py) equal a
from-scratch loop written from the papers, step for step, and stay in the ball;
their new options leave the run ids of configs that do not use them alone."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_convnorm.config import config_from_dict, expand_grid
from robustbench_convnorm.config.grid import run_identity
from test_training import make_method

EPS, STEPS, LR = 0.1, 3, 0.5


def small_model():
    """A model whose train and eval modes differ (dropout off in eval), so a
    method that crafts in the wrong mode does not match the reference."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.BatchNorm1d(16), nn.Linear(16, 3))
    from robustbench_convnorm.normalizers import get_normalizer
    model.normalizer = get_normalizer("vanilla")
    return model


def batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g)


def pgd(model, x, start, objective, step):
    """k signed-gradient steps of `objective`, projected to the ball and [0, 1]."""
    delta = start
    for _ in range(STEPS):
        delta = delta.detach().requires_grad_(True)
        g, = torch.autograd.grad(objective(model((x + delta).clamp(0, 1))), delta)
        delta = (delta + step * g.sign()).clamp(-EPS, EPS)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).clamp(0, 1).detach()


def sgd(model, loss):
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            p -= LR * g


def assert_same(model, ref):
    for (name, p), q in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-6), name


def test_pgd_training_is_madrys_loop():
    model = small_model()
    ref = copy.deepcopy(model)
    method, _, _ = make_method("pgd", model, eps=EPS, lr=LR, attack_steps=STEPS, batch_size=6)
    method.generator.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    step = 2.5 * EPS / STEPS
    for seed in range(3):
        x, y = batch(seed)
        method.train_batch(x, y)
        ref.train()
        start = (torch.rand(x.shape, generator=gen) * 2 - 1) * EPS
        x_adv = pgd(ref, x, (x + start).clamp(0, 1) - x, lambda z: F.cross_entropy(z, y), step)
        assert (x_adv - x).abs().max() <= EPS + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
        sgd(ref, F.cross_entropy(ref(x_adv), y))
    assert_same(model, ref)
    assert model.training


def test_trades_is_the_papers_objective_crafted_in_eval_mode():
    model = small_model()
    ref = copy.deepcopy(model)
    beta, step = 4.0, 0.03
    method, _, _ = make_method("trades", model, eps=EPS, step=step, lr=LR, attack_steps=STEPS, trades_beta=beta,
                               batch_size=6)
    method.generator.manual_seed(5)
    gen = torch.Generator().manual_seed(5)
    for seed in range(3):
        x, y = batch(seed)
        method.train_batch(x, y)
        ref.eval()
        with torch.no_grad():
            p_clean = F.softmax(ref(x), dim=1)
        start = 0.001 * torch.randn(x.shape, generator=gen)
        x_adv = pgd(ref, x, start, lambda z: F.kl_div(F.log_softmax(z, 1), p_clean, reduction="sum"), step)
        ref.train()
        logits = ref(x)
        # KL(p_clean || p_adv) summed over classes, averaged over the batch (TRADES' Eq. 5)
        kl = F.kl_div(F.log_softmax(ref(x_adv), 1), F.softmax(logits, 1), reduction="batchmean")
        sgd(ref, F.cross_entropy(logits, y) + beta * kl)
    assert_same(model, ref)
    assert model.training


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_a_broken_attack_does_not_match(method, monkeypatch):
    """The reference comparison can fail: with the sign of the attack step
    flipped (a descending attack) the weights differ from the paper's loop."""
    from robustbench_convnorm.training import multistep

    model = small_model()
    ref = copy.deepcopy(model)
    real = multistep._MultiStep.attack_step
    monkeypatch.setattr(multistep._MultiStep, "attack_step", property(lambda self: -real.fget(self)))
    m, _, _ = make_method(method, model, eps=EPS, lr=LR, attack_steps=STEPS, batch_size=6)
    m.generator.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    x, y = batch(0)
    m.train_batch(x, y)
    if method == "pgd":
        start = (torch.rand(x.shape, generator=gen) * 2 - 1) * EPS
        x_adv = pgd(ref, x, (x + start).clamp(0, 1) - x, lambda z: F.cross_entropy(z, y), 2.5 * EPS / STEPS)
        sgd(ref, F.cross_entropy(ref(x_adv), y))
    else:
        ref.eval()
        with torch.no_grad():
            p_clean = F.softmax(ref(x), dim=1)
        x_adv = pgd(ref, x, 0.001 * torch.randn(x.shape, generator=gen),
                    lambda z: F.kl_div(F.log_softmax(z, 1), p_clean, reduction="sum"), 2.5 * EPS / STEPS)
        ref.train()
        logits = ref(x)
        # KL(p_clean || p_adv) summed over classes, averaged over the batch (TRADES' Eq. 5)
        kl = F.kl_div(F.log_softmax(ref(x_adv), 1), F.softmax(logits, 1), reduction="batchmean")
        sgd(ref, F.cross_entropy(logits, y) + 6.0 * kl)
    with pytest.raises(AssertionError):
        assert_same(model, ref)


def _spec(**train):
    raw = {"data": {"source": "synthetic"}, "train": {"method": "free", **train}}
    return expand_grid(config_from_dict(raw))[0]


def test_new_training_options_keep_the_run_ids_of_configs_that_do_not_use_them():
    plain = _spec()
    ident = run_identity(plain.config)
    assert "attack_steps" not in ident["train"] and "trades_beta" not in ident["train"]
    assert _spec(attack_steps=10).run_id == plain.run_id
    assert _spec(attack_steps=7).run_id != plain.run_id
    assert _spec(method="pgd").run_id != plain.run_id


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_a_resumed_multistep_run_equals_an_uninterrupted_one(tmp_path, method):
    """Through the real loop: the random starts' generator is in the checkpoint,
    so stopping after one epoch and resuming ends bit for bit where an
    uninterrupted run ends."""
    from test_training import _spec, _train

    spec = _spec(tmp_path / "a", epochs=2, method=method, attack_steps=2)[0]
    model_a, res_a = _train(spec, tmp_path)
    spec_b = _spec(tmp_path / "b", epochs=2, method=method, attack_steps=2, stop_after_epochs=1)[0]
    assert _train(spec_b, tmp_path)[1].status == "stopped"
    spec_b.config.train.stop_after_epochs = None
    model_b, res_b = _train(spec_b, tmp_path)
    assert res_a.status == res_b.status == "finished"
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), k
