"""Every normalizer in every model: a training step (forward, backward with
its penalty, optimizer step), evaluation, and a state-dict round trip through
``torch.load(weights_only=True)``; plus the extension path a user takes: a
normalizer defined here, outside the package, with ``@register_normalizer``."""
import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from robustbench_convnorm.models import build_model
from robustbench_convnorm.normalizers import (NORMALIZERS, Normalizer, get_normalizer, list_normalizers,
                                              register_normalizer)
from robustbench_convnorm.registry import RegistryError


# ----------------------------------------------------- a user's normalizer
@register_normalizer("test_ext_weight_standardized")
class WeightStandardized(Normalizer):
    """Weight standardization (each filter: zero mean, unit norm, times gain),
    defined in a test file: nothing in the package names it."""

    def __init__(self, *, gain: float = 1.0):
        self.gain = float(gain)

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return _WSConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias,
                         gain=self.gain)


class _WSConv2d(nn.Conv2d):
    def __init__(self, *args, gain, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = gain

    def forward(self, x):
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        w = self.gain * w / w.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


BUILTIN = sorted(n for n in list_normalizers()
                 if NORMALIZERS.get(n).__module__.startswith("robustbench_convnorm.normalizers."))
CASES = [(name, arch, False) for name in BUILTIN + ["test_ext_weight_standardized"]
         for arch in ("resnet18", "vgg16", "convnet")]
CASES += [(name, "convnet", True) for name in BUILTIN]  # "X + BN"


def test_the_five_methods_are_registered():
    assert {"vanilla", "convnorm", "sn", "oni", "ocnn", "cayley"} <= set(BUILTIN)


def _build(name, arch, batchnorm, seed):
    torch.manual_seed(seed)
    normalizer = get_normalizer(name)
    width = 0.5 if arch == "convnet" else 0.125
    model = build_model(arch, normalizer, num_classes=10, in_channels=3, mean=[0.49, 0.48, 0.45],
                        std=[0.25, 0.24, 0.26], batchnorm=batchnorm, width=width)
    return normalizer, model


def _train_eval_roundtrip(name, arch, batchnorm, device):
    normalizer, model = _build(name, arch, batchnorm, seed=0)
    model.to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 16, 16, generator=gen).to(device)
    y = torch.randint(0, 10, (4,), generator=gen).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    model.train()
    for _ in range(2):
        opt.zero_grad()
        logits = model(x)
        assert logits.shape == (4, 10)
        loss = F.cross_entropy(logits, y) + normalizer.penalty(model)
        assert torch.isfinite(loss)
        loss.backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{name}/{arch}: no gradient reaches {pname}"
            assert torch.isfinite(p.grad).all(), f"{name}/{arch}: non-finite gradient in {pname}"
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        opt.step()
    changed = [k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert changed, f"{name}/{arch}: the optimizer step changed nothing"

    model.eval()
    x_eval = torch.rand(3, 3, 16, 16, generator=gen).to(device)
    with torch.no_grad():
        out = model(x_eval)
    assert torch.isfinite(out).all()

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True, map_location=device)
    _, fresh = _build(name, arch, batchnorm, seed=123)  # other random weights and buffers
    fresh.to(device)
    fresh.load_state_dict(state)
    fresh.eval()
    with torch.no_grad():
        again = fresh(x_eval)
        same_model = model(x_eval)
    torch.testing.assert_close(again, out, rtol=0, atol=1e-6)
    torch.testing.assert_close(same_model, out, rtol=0, atol=0)  # evaluation changes no state


@pytest.mark.parametrize("name,arch,batchnorm", CASES)
def test_train_step_eval_and_state_dict_round_trip(name, arch, batchnorm):
    _train_eval_roundtrip(name, arch, batchnorm, torch.device("cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("name", BUILTIN)
def test_on_cuda(name):
    _train_eval_roundtrip(name, "convnet", False, torch.device("cuda"))


def test_a_normalizer_defined_outside_the_package_works_through_the_registry():
    assert "test_ext_weight_standardized" in list_normalizers()
    normalizer = get_normalizer("test_ext_weight_standardized", gain=2.0)
    model = build_model("convnet", normalizer, num_classes=4, in_channels=1, mean=[0.5], std=[0.25],
                        batchnorm=False, width=0.5)
    convs = [m for m in model.modules() if getattr(m, "conv_role", None)]
    assert convs and all(isinstance(m, _WSConv2d) and m.gain == 2.0 for m in convs)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(RegistryError, match="gain"):
        get_normalizer("test_ext_weight_standardized", gian=2.0)


def test_a_normalizer_defined_outside_the_package_runs_from_a_config(tmp_path):
    run = pytest.importorskip("robustbench_convnorm.run")
    if not hasattr(run, "main"):
        pytest.skip("the run command is not there yet")
    config = {
        "data": {"source": "synthetic", "options": {"n_train": 64, "n_test": 32, "size": 8, "num_classes": 4},
                 "augment": {"crop_padding": 0, "flip": False}},
        "model": {"arch": "convnet", "width": 0.5},
        "normalizers": [{"name": "test_ext_weight_standardized", "options": {"gain": 1.5}}],
        "train": {"method": "natural", "epochs": 1, "batch_size": 32, "lr": 0.05, "val_examples": 0,
                  "val_pgd_steps": 0},
        "eval": {"batch_size": 32, "lipschitz": False, "checks": False, "evaluators": [{"type": "clean"}]},
        "seeds": [0],
        "device": "cpu",
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "ext.yaml"
    path.write_text(yaml.safe_dump(config))
    assert run.main([str(path)]) == 0
    (record_path,) = Path(tmp_path / "out").glob("runs/*/record.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "finished"
    assert record["normalizer"] == "test_ext_weight_standardized"
    assert record["normalizer_options"] == {"gain": 1.5}
