"""train.loss: the offset cross-entropy of 1-Lipschitz training, its wiring
into every method, and run ids that stay the same for configs without it."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustbench_convnorm.config import config_from_dict, make_run_id
from robustbench_convnorm.training.losses import offset_cross_entropy, training_loss
from robustbench_convnorm.training.methods import METHODS


def test_offset_cross_entropy_is_the_formula():
    gen = torch.Generator().manual_seed(0)
    z, y = torch.randn(6, 5, generator=gen), torch.randint(0, 5, (6,), generator=gen)
    m, t = 0.3, 0.25
    shifted = z.clone()
    shifted[torch.arange(6), y] -= math.sqrt(2) * m
    expected = t * F.cross_entropy(shifted / t, y)
    torch.testing.assert_close(offset_cross_entropy(z, y, m, t), expected)
    torch.testing.assert_close(offset_cross_entropy(z, y, 0.0, 1.0), F.cross_entropy(z, y))
    # the offset only lowers the true class: the loss grows with the margin
    assert offset_cross_entropy(z, y, 0.5, t) > offset_cross_entropy(z, y, 0.1, t)


@pytest.mark.parametrize("method", ["natural", "fgsm_rs"])
def test_every_method_trains_on_the_configured_loss(method):
    cfg = config_from_dict({"train": {"method": method, "loss": "offset_cross_entropy", "loss_margin": 0.5,
                                      "loss_temperature": 0.5}})
    model = torch.nn.Linear(3, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    import contextlib
    m = METHODS.get(method)(cfg.train, model, opt, sched, lambda: torch.zeros(()), contextlib.nullcontext,
                            torch.device("cpu"))
    x, y = torch.rand(5, 3), torch.randint(0, 4, (5,))
    loss, _ = m.loss(x, y)
    torch.testing.assert_close(loss, offset_cross_entropy(model(x), y, 0.5, 0.5))


def test_run_ids_without_the_new_keys_are_unchanged():
    base = {"model": {"arch": "convnet"}, "normalizers": [{"name": "vanilla"}]}
    plain = make_run_id(config_from_dict(base))
    # the id this config had before train.loss and model.options existed (main at 49f8d75)
    assert plain == "digits-convnet-vanilla-natural-s0-43672e4d"
    assert plain == make_run_id(config_from_dict({**base, "train": {"loss": "cross_entropy"},
                                                  "model": {"arch": "convnet", "options": {}}}))
    changed = make_run_id(config_from_dict({**base, "train": {"loss": "offset_cross_entropy"}}))
    assert changed != plain
    assert training_loss(config_from_dict(base).train) is F.cross_entropy


def test_quickstart_run_ids_are_those_of_before():
    from robustbench_convnorm.config import expand_grid, load_config
    path = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
    ids = [s.run_id for s in expand_grid(load_config(str(path)))]
    assert ids[:2] == ["digits-convnet-vanilla-free-s0-0f0d875d", "digits-convnet-bn-bn-free-s0-bd92a589"]
