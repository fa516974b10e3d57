import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_convnorm.config import TrainConfig, config_from_dict, expand_grid
from robustbench_convnorm.normalizers import get_normalizer
from robustbench_convnorm.training.loop import autocast_for, make_optimizer, train_run
from robustbench_convnorm.training.methods import METHODS
from robustbench_convnorm.training.schedules import lr_factor, make_scheduler


def tiny_model(in_features=12, classes=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(in_features, classes))
    model.normalizer = get_normalizer("vanilla")
    return model


def make_method(name, model, **train):
    cfg = TrainConfig(method=name, momentum=0.0, weight_decay=0.0, schedule="constant", **train)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=1000)
    method = METHODS.get(name)(cfg, model, opt, sched, lambda: torch.zeros(()), autocast_for("off", torch.device("cpu")),
                               torch.device("cpu"))
    return method, opt, sched


def test_one_free_replay_is_an_fgsm_step_and_an_sgd_step():
    model = tiny_model()
    ref = copy.deepcopy(model)
    x = torch.rand(5, 3, 2, 2)
    y = torch.tensor([0, 1, 2, 0, 1])
    eps, step, lr = 0.1, 0.07, 0.5
    method, _, _ = make_method("free", model, eps=eps, step=step, lr=lr, replays=1, batch_size=5)
    method.train_batch(x, y)
    # by hand: delta starts at 0; the same backward gives both gradients
    d = torch.zeros_like(x, requires_grad=True)
    loss = F.cross_entropy(ref((x + d).clamp(0, 1)), y)
    grads = torch.autograd.grad(loss, [d] + list(ref.parameters()))
    for p, p_ref, g in zip(model.parameters(), ref.parameters(), grads[1:]):
        assert torch.allclose(p, p_ref - lr * g, atol=1e-6)
    assert torch.allclose(method.delta, (step * grads[0].sign()).clamp(-eps, eps))


def test_m_replays_take_m_optimizer_steps_and_stay_in_the_ball():
    model = tiny_model()
    seen_inputs = []
    model.register_forward_pre_hook(lambda m, inp: seen_inputs.append(inp[0].detach().clone()))
    method, opt, sched = make_method("free", model, eps=0.05, step=0.05, lr=0.1, replays=4, batch_size=6)
    steps = []
    opt.register_step_post_hook(lambda *a: steps.append(1))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(6, 3, 2, 2, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(3)]
    batches.append((torch.rand(2, 3, 2, 2, generator=g), torch.randint(0, 3, (2,), generator=g)))  # short last batch
    for x, y in batches:
        method.train_batch(x, y)
    assert len(steps) == 4 * len(batches) and sched.last_epoch == 4 * len(batches)
    assert method.delta.abs().max() <= 0.05 + 1e-7
    flat = [(x, i) for (x, _) in batches for i in range(4)]
    assert len(seen_inputs) == len(flat)
    for (x, _), x_adv in zip(flat, seen_inputs):
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert (x_adv - x).abs().max() <= 0.05 + 1e-6
    assert any((x_adv - x).abs().max() > 0 for (x, _), x_adv in zip(flat, seen_inputs))  # it did perturb


def test_delta_is_kept_across_minibatches_unless_reset():
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    for reset, expect_zero_start in ((False, False), (True, True)):
        model = tiny_model()
        starts = []
        model.register_forward_pre_hook(lambda m, inp: starts.append(inp[0].detach().clone()))
        method, _, _ = make_method("free", model, eps=0.1, lr=0.01, replays=2, batch_size=4, reset_delta=reset)
        method.train_batch(x, y)
        method.train_batch(x, y)
        first_of_second_batch = starts[2]
        assert torch.equal(first_of_second_batch, x.clamp(0, 1)) == expect_zero_start


def test_fgsm_rs_perturbation_in_ball():
    model = tiny_model()
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    method, opt, _ = make_method("fgsm_rs", model, eps=0.1, lr=0.1, batch_size=8)
    x, y = torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,))
    method.train_batch(x, y)
    assert len(seen) == 2                     # random start + FGSM, then the training forward
    adv = seen[-1]
    assert adv.min() >= 0 and adv.max() <= 1 and (adv - x).abs().max() <= 0.1 + 1e-6


def test_schedules():
    assert lr_factor("multistep", 9.99, 30, [10, 20]) == 1.0
    assert lr_factor("multistep", 10.0, 30, [10, 20]) == pytest.approx(0.1)
    assert lr_factor("multistep", 25.0, 30, [10, 20]) == pytest.approx(0.01)
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 10, 10) == pytest.approx(0.0)
    assert lr_factor("cyclic", 4.0, 10, warmup_fraction=0.4) == pytest.approx(1.0)
    assert lr_factor("cyclic", 2.0, 10, warmup_fraction=0.4) == pytest.approx(0.5)
    assert lr_factor("cyclic", 10.0, 10, warmup_fraction=0.4) == pytest.approx(0.0)


def _spec(tmp_path, **train):
    raw = {"data": {"source": "synthetic", "options": {"n_train": 48, "n_test": 16, "size": 8},
                    "augment": {"crop_padding": 1}},
           "model": {"arch": "convnet", "width": 0.25},
           "normalizers": [{"name": "vanilla"}, {"name": "vanilla", "label": "slow", "overrides": {"train.lr": 0.01}}],
           "train": {"method": "free", "epochs": 2, "batch_size": 16, "replays": 2, "val_examples": 16,
                     "val_pgd_steps": 2, **train},
           "output_dir": str(tmp_path)}
    return expand_grid(config_from_dict(raw))


def _train(spec, tmp_path):
    from robustbench_convnorm.builders import build_run_model, model_meta
    from robustbench_convnorm.data import prepare_data
    torch.manual_seed(spec.seed)
    data = prepare_data(spec.config.data, spec.seed)
    meta = model_meta(data)
    model = build_run_model(spec.config, meta)
    return model, train_run(spec, model, data, meta, torch.device("cpu"), spec.run_dir, log=lambda *a: None)


def test_per_normalizer_override_reaches_the_optimizer(tmp_path):
    from robustbench_convnorm.checkpoints import load_checkpoint
    specs = _spec(tmp_path, lr=0.1, schedule="constant", epochs=1)
    for spec, lr in zip(specs, (0.1, 0.01)):
        _, result = _train(spec, tmp_path)
        assert result.status == "finished"
        ckpt = load_checkpoint(spec.run_dir / "checkpoint.pt")
        assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr)
        assert result.log[0]["lr"] == pytest.approx(lr)


def test_stop_and_resume_in_process_equals_uninterrupted(tmp_path):
    spec = _spec(tmp_path / "a", epochs=3)[0]
    model_a, res_a = _train(spec, tmp_path)
    spec_b = _spec(tmp_path / "b", epochs=3, stop_after_epochs=1)[0]
    _, res_b1 = _train(spec_b, tmp_path)
    assert res_b1.status == "stopped" and res_b1.epochs_done == 1
    spec_b.config.train.stop_after_epochs = None
    model_b, res_b = _train(spec_b, tmp_path)
    assert res_b.status == "finished"
    for (k, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), k
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in rows]
    assert strip(res_a.log) == strip(res_b.log)
