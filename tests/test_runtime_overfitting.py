"""Issue 20, item 7: robust overfitting is noticed (flags from the per-epoch
validation PGD) and remedied on request (train.select: best_val_pgd,
train.ema), each recorded; a resumed EMA run equals an uninterrupted one."""
import copy

import pytest
import torch

from robustbench_convnorm.checkpoints import load_checkpoint
from robustbench_convnorm.config import config_from_dict, expand_grid, make_run_id
from robustbench_convnorm.training import loop
from robustbench_convnorm.training.ema import WeightEMA
from robustbench_convnorm.training.overfitting import overfitting_flags


def _rows(*pgd):
    return [{"epoch": i + 1, "val_pgd_acc": v} for i, v in enumerate(pgd)]


def test_a_sudden_collapse_is_catastrophic_overfitting():
    flags, details = overfitting_flags(_rows(30.0, 35.0, 5.0, 4.0), 256)
    assert "train:catastrophic_overfit" in flags
    assert details["catastrophic"] == {"epoch": 3, "val_pgd_acc": 5.0, "best_before": 35.0}
    # a drop of 10 points that keeps more than half: not a collapse
    assert "train:catastrophic_overfit" not in overfitting_flags(_rows(30.0, 35.0, 25.0), 256)[0]


def test_a_late_decline_beyond_the_noise_is_robust_overfitting():
    # 7 points below the best epoch: two standard errors are 8.8 points on 256 examples, 3.1 on 2000
    assert overfitting_flags(_rows(30.0, 45.0, 44.0, 38.0), 256)[0] == []
    flags, details = overfitting_flags(_rows(30.0, 45.0, 44.0, 38.0), 2000)
    assert flags == ["train:robust_overfit"]
    assert details["robust"]["best_epoch"] == 2 and details["robust"]["drop"] == pytest.approx(7.0)
    assert overfitting_flags(_rows(30.0, 45.0, 45.0), 2000)[0] == []    # the best at the end: no decline
    assert overfitting_flags([{"epoch": 1, "val_pgd_acc": None}], 256)[0] == []   # no validation PGD: no flag


def test_the_average_follows_the_optimizer_steps_with_the_warm_up():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = WeightEMA(model, 0.9)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    ema.attach(opt)
    start = model.weight.detach().clone()
    model.weight.grad = torch.ones_like(model.weight)
    opt.step()                                       # w = start - 1; t = 1: d = min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.average["weight"], d * start + (1 - d) * (start - 1))
    with ema.applied():
        assert torch.equal(model.weight, ema.average["weight"])
    assert torch.equal(model.weight, start - 1)      # the model's own weights are back


def _spec(tmp_path, **train):
    raw = {"data": {"source": "synthetic", "options": {"n_train": 48, "n_test": 16, "size": 8},
                    "augment": {"crop_padding": 1}},
           "model": {"arch": "convnet", "width": 0.25}, "normalizers": [{"name": "vanilla", "options": {}}],
           "batchnorm": True, "speed": {"channels_last": "off"},
           "train": {"method": "free", "epochs": 3, "batch_size": 16, "replays": 2, "val_examples": 16,
                     "val_pgd_steps": 2, **train},
           "output_dir": str(tmp_path)}
    return expand_grid(config_from_dict(raw))[0]


def _train(spec):
    from robustbench_convnorm.builders import build_run_model, model_meta
    from robustbench_convnorm.data import prepare_data

    torch.manual_seed(spec.seed)
    data = prepare_data(spec.config.data, spec.seed)
    meta = model_meta(data)
    model = build_run_model(spec.config, meta)
    return model, loop.train_run(spec, model, data, meta, torch.device("cpu"), spec.run_dir, log=lambda *a: None)


def test_ema_resumed_equals_uninterrupted_and_the_averages_are_what_is_evaluated(tmp_path):
    model_a, res_a = _train(_spec(tmp_path / "a", ema=0.9))
    spec_b = _spec(tmp_path / "b", ema=0.9, stop_after_epochs=1)
    assert _train(spec_b)[1].status == "stopped"
    spec_b.config.train.stop_after_epochs = None
    model_b, res_b = _train(spec_b)
    assert res_a.status == res_b.status == "finished"
    for (k, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), k
    ckpt = load_checkpoint(spec_b.run_dir / "checkpoint.pt")
    for name, value in ckpt["ema"]["average"].items():       # the evaluated weights are the averages
        assert torch.equal(ckpt["model"][name], value), name
    assert any(not torch.equal(ckpt["last_model"][n], v) for n, v in ckpt["ema"]["average"].items())
    assert res_b.training["ema"] == 0.9 and res_b.training["select"] == "last"
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in rows]
    assert strip(res_a.log) == strip(res_b.log)


def test_best_validation_pgd_epoch_is_evaluated_and_recorded(tmp_path, monkeypatch):
    scripted = iter([(50.0, 40.0, "train-subset"), (50.0, 45.0, "train-subset"), (50.0, 5.0, "train-subset")])
    real = loop.validate

    def validate(model, subset, tc, batch_size):
        real(model, subset, tc, batch_size)   # the real check runs; its PGD accuracy is scripted
        return next(scripted)

    monkeypatch.setattr(loop, "validate", validate)
    snapshots = {}
    spec = _spec(tmp_path, select="best_val_pgd")
    real_observe = loop.BestValPGD.observe

    def observe(self, epoch, acc, model):
        snapshots[epoch] = copy.deepcopy(model.state_dict())
        real_observe(self, epoch, acc, model)

    monkeypatch.setattr(loop.BestValPGD, "observe", observe)
    model, result = _train(spec)
    assert result.status == "finished"
    assert result.training["selected_epoch"] == 2 and result.training["selected_val_pgd_acc"] == 45.0
    assert "train:catastrophic_overfit" in result.flags          # 45 -> 5 within one epoch
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[2][k]), k               # epoch 2's weights are the model's now
    ckpt = load_checkpoint(spec.run_dir / "checkpoint.pt")
    assert ckpt["best"]["epoch"] == 2 and all(torch.equal(ckpt["model"][k], v) for k, v in snapshots[2].items())


def test_the_remedies_are_off_by_default_and_enter_the_run_id_only_when_on(tmp_path):
    plain = _spec(tmp_path)
    assert plain.config.train.select == "last" and plain.config.train.ema is None
    assert make_run_id(plain.config) == make_run_id(_spec(tmp_path, select="last").config)
    ids = {make_run_id(_spec(tmp_path, **kw).config) for kw in ({}, {"ema": 0.999}, {"select": "best_val_pgd"})}
    assert len(ids) == 3
    with pytest.raises(ValueError, match="best_val_pgd needs the per-epoch validation PGD"):
        _train(_spec(tmp_path / "c", select="best_val_pgd", val_pgd_steps=0))
