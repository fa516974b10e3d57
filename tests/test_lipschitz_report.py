"""A model's Lipschitz report (robustbench_convnorm.lipschitz.model_report,
format_report, plot_layer_norms, table9): the harness's tagged models, models
built outside the harness (plain torch modules, untagged layers), layers the
report cannot fully handle, and the TN cross-check as the report shows it."""
import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_convnorm import lipschitz as lip
from robustbench_convnorm.lipschitz import power_method
from robustbench_convnorm.models.registry import build_model
from robustbench_convnorm.normalizers import get_normalizer, tagged_convs

from operators import explicit_operator, singular_values

DT = torch.float64


# ------------------------------------------------------- the harness's models

class ScaledConv(nn.Module):
    """A layer that is more than its weight: 2 * conv(x, weight)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3) * 0.2)
        self.stride, self.padding = (1, 1), (1, 1)

    def forward(self, x):
        return 2 * F.conv2d(x, self.weight, None, 1, 1)


def test_weight_is_operator():
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
    assert lip.weight_is_operator(conv, (3, 8, 8))
    sn = torch.nn.utils.parametrizations.spectral_norm(nn.Conv2d(3, 4, 3, padding=1))
    assert lip.weight_is_operator(sn, (3, 8, 8))
    assert not lip.weight_is_operator(ScaledConv(3, 4), (3, 8, 8))
    assert not lip.weight_is_operator(nn.Identity(), (3, 8, 8))


def _convnet():
    return build_model("convnet", get_normalizer("vanilla"), num_classes=10, in_channels=3, mean=[0.5] * 3,
                       std=[0.25] * 3, batchnorm=True, width=0.25)


def test_model_report_on_a_convnet():
    model = _convnet()
    model.train()
    bn_before = model.bn1.running_mean.clone()
    report = lip.model_report(model, (3, 16, 16), power_iters=300, power_tol=1e-9)
    json.dumps(report, allow_nan=False)  # stored as is in record.json
    names = [name for name, _ in tagged_convs(model)]
    rows = report["layers"]
    assert [r["name"] for r in rows] == names
    assert model.training and torch.equal(model.bn1.running_mean, bn_before)
    by_name = {r["name"]: r for r in rows}
    assert by_name["conv1"]["role"] == "stem" and by_name["conv1"]["in_size"] == [16, 16]
    assert by_name["layer2.conv1"]["stride"] == [2, 2] and by_name["layer2.conv1"]["out_size"] == [8, 8]
    assert by_name["layer3.conv2"]["in_size"] == [4, 4]
    assert by_name["layer3.shortcut.0"]["role"] == "shortcut"
    for r in rows:
        assert r["bounds_of"] == "layer"
        assert r["spectral_norm"] <= r["tn_bound"] * (1 + 1e-5)
        assert r["exact_circular"] <= r["tn_bound"] * (1 + 1e-5)
        assert r["tn_bound"] <= r["f4_bound"] * (1 + 1e-5) and r["f4_bound"] <= r["flat_bound"] * (1 + 1e-9)
        assert r["channel_cond"] >= 1 and r["channel_cond_max"] >= r["channel_cond"]
        if r["shape"][2] == 1:  # 1x1: flat spectrum per channel
            assert r["channel_cond"] == pytest.approx(1.0) and r["channel_cond_weight"] == pytest.approx(1.0)
    # the power-iteration column is the actual layer's norm
    layer = dict(tagged_convs(model))["layer2.conv1"]
    dense = float(singular_values(explicit_operator(layer.double(), (4, 16, 16)))[0])
    layer.float()
    assert by_name["layer2.conv1"]["spectral_norm"] == pytest.approx(dense, rel=1e-3)
    norms = [r["spectral_norm"] for r in rows]
    assert report["lip_product_log10"] == pytest.approx(sum(math.log10(v) for v in norms))
    assert report["mean_layer_spectral_norm"] == pytest.approx(sum(norms) / len(norms))
    text = lip.format_report(report)
    assert "layer3.shortcut.0" in text and "lip_product_log10" in text


def test_model_report_marks_weight_only_bounds():
    model = nn.Sequential(ScaledConv(3, 4))
    model[0].conv_role = "plain"
    report = lip.model_report(model, (3, 8, 8), power_iters=500, power_tol=1e-10)
    row = report["layers"][0]
    assert row["bounds_of"] == "weight" and row["exact_circular"] is None
    # the layer is twice its weight's conv: the power column sees that
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    conv.weight.data.copy_(model[0].weight.data)
    plain = float(singular_values(explicit_operator(conv.double(), (3, 8, 8)))[0])
    assert row["spectral_norm"] == pytest.approx(2 * plain, rel=1e-4)


def test_model_report_convnorm_pre_affine_condition_is_near_one():
    torch.manual_seed(0)
    norm = get_normalizer("convnorm")
    model = nn.Sequential(norm.conv(3, 6, 3, padding=1), nn.ReLU(), norm.conv(6, 8, 3, stride=2, padding=1))
    for m in model:
        if hasattr(m, "affine"):
            m.conv_role = "plain"
            with torch.no_grad():
                m.affine.weight.uniform_(-1, 1)  # a non-trivial learnable affine
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 16, 16))
    affines = [m.affine for m in model if hasattr(m, "affine")]
    rows = lip.model_report(model, (3, 16, 16))["layers"]
    assert [m.affine for m in model if hasattr(m, "affine")] == affines  # put back
    for r in rows:
        assert r["bounds_of"] == "weight" and r["exact_circular"] is None
        assert 1.0 <= r["channel_cond_preaffine"] < 1.3      # ConvNorm: channels are (nearly) tight frames
        assert r["channel_cond"] > 1.5 * r["channel_cond_preaffine"]  # the affine reshapes the spectrum


# ------------------------------------------------- models built outside the harness

class Outside(nn.Module):
    """A plain torch model no harness builder made: no conv is tagged."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=4),  # grouped
                                  nn.ReLU(), nn.Conv2d(8, 6, 3, padding=2, dilation=2))  # dilated
        self.down = nn.Conv2d(6, 6, 3, stride=2, padding=1, padding_mode="circular", bias=False)
        self.head = nn.Linear(6, 10)

    def forward(self, x):
        x = self.down(self.body(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _circular_twin(conv):
    """The same conv with circular padding (its exact norm's operator)."""
    twin = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     dilation=conv.dilation, groups=conv.groups, bias=False, padding_mode="circular").to(DT)
    twin.weight.data.copy_(conv.weight.data)
    return twin


def test_report_of_a_plain_torch_model_finds_every_conv_layer():
    torch.manual_seed(0)
    model = Outside().double()
    report = lip.model_report(model, (3, 8, 8), power_iters=500, power_tol=1e-9)
    json.dumps(report, allow_nan=False)
    rows = {r["name"]: r for r in report["layers"]}
    assert list(rows) == ["stem", "body.1", "body.3", "down"]
    assert report["warnings"] == []
    convs = {"stem": model.stem, "body.1": model.body[1], "body.3": model.body[3], "down": model.down}
    sizes = {"stem": 8, "body.1": 8, "body.3": 8, "down": 8}
    for name, conv in convs.items():
        r = rows[name]
        assert r["role"] == "untagged" and r["bounds_of"] == "layer" and r["tn_check"] == "ok"
        shape = (conv.in_channels, sizes[name], sizes[name])
        layer = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=False,
                          padding_mode=conv.padding_mode).to(DT)
        layer.weight.data.copy_(conv.weight.data)
        dense = float(singular_values(explicit_operator(layer, shape))[0])
        circular = float(singular_values(explicit_operator(_circular_twin(conv), shape))[0])
        assert dense * (1 - 1e-4) <= r["spectral_norm"] <= dense * (1 + 1e-9), name  # power: from below
        # exact: the grouped conv's block-diagonal operator, the dilated kernel's circular conv
        assert r["exact_circular"] == pytest.approx(circular, rel=1e-9), name
        assert max(dense, circular) <= r["tn_bound"] * (1 + 1e-9) <= r["f4_bound"] * (1 + 1e-6), name
    norms = [r["spectral_norm"] for r in rows.values()]
    assert report["lip_product_log10"] == pytest.approx(sum(math.log10(n) for n in norms))


def test_report_of_untagged_harness_layers_and_layers_it_cannot_fully_handle(caplog):
    torch.manual_seed(1)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            # untagged, with a depthwise affine conv inside
            self.add_module("0", get_normalizer("convnorm").conv(3, 4, 3, padding=1))
            self.add_module("1", nn.ConvTranspose2d(4, 4, 2, stride=2, bias=False))
            self.unused = nn.Conv2d(4, 4, 1)  # a conv the forward pass never runs

        def forward(self, x):
            return self[1](self[0](x))

        def __getitem__(self, i):
            return getattr(self, str(i))

    model = Model()
    with caplog.at_level(logging.WARNING, logger="robustbench_convnorm.lipschitz"):
        report = lip.model_report(model, (3, 6, 6), power_iters=1000, power_tol=1e-10)
    rows = {r["name"]: r for r in report["layers"]}
    assert list(rows) == ["0", "1"]  # the affine inside ConvNorm2d is part of layer 0
    assert rows["0"]["type"] == "ConvNorm2d" and rows["0"]["bounds_of"] == "weight"
    assert rows["0"]["channel_cond_preaffine"] is not None
    up = rows["1"]
    assert up["type"] == "ConvTranspose2d" and up["tn_bound"] is None and up["channel_cond"] is None
    with torch.no_grad():
        dense = singular_values(explicit_operator(model[1].double(), (4, 6, 6)))[0]
    assert up["spectral_norm"] == pytest.approx(float(dense), rel=1e-5)
    warnings = report["warnings"]
    assert any(w.startswith("1 (ConvTranspose2d): only the power-iteration norm") for w in warnings)
    assert any(w.startswith("unused (Conv2d): not run by the forward pass") for w in warnings)
    assert len(warnings) == 2 and all(w in caplog.text for w in warnings)
    assert report["lip_product_log10"] == pytest.approx(sum(math.log10(r["spectral_norm"]) for r in rows.values()))


def test_report_marks_paddings_the_bounds_do_not_cover():
    """Reflect padding enlarges the input before the conv; a circular padding
    wider than the kernel's reach repeats outputs (the layer's norm then
    exceeds the circular conv's). Neither layer is conv2d(x, weight) with
    zero or proper circular padding, so the bounds are the weight's."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", bias=False),
                          nn.Conv2d(3, 3, 3, padding=2, padding_mode="circular", bias=False))
    report = lip.model_report(model.double(), (2, 6, 6), power_iters=500, power_tol=1e-10)
    reflect, wide = report["layers"]
    for r in (reflect, wide):
        assert r["bounds_of"] == "weight" and r["exact_circular"] is None and r["tn_check"] is None
    assert wide["out_size"] == [8, 8]
    twin = nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular", bias=False).double()
    twin.weight.data.copy_(model[1].weight.data)
    circular = float(singular_values(explicit_operator(twin, (3, 6, 6)))[0])
    assert wide["spectral_norm"] > circular * 1.01  # repeated outputs: more than the circular conv
    assert [w.split(":")[0] for w in report["warnings"]] == ["0", "1"]
    assert all("padding_mode=" in w for w in report["warnings"])


def test_report_of_a_model_without_conv_layers_says_so():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    report = lip.model_report(model, (3, 4, 4))
    assert report["layers"] == [] and report["lip_product_log10"] is None
    assert report["mean_layer_spectral_norm"] is None
    assert len(report["warnings"]) == 1 and report["warnings"][0].startswith("no conv layers found in Sequential")
    text = lip.format_report(report)
    assert "no conv layers" in text and "lip_product_log10 = -" in text


def test_report_of_a_layer_with_nan_weights_leaves_it_out_of_the_product():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    with torch.no_grad():
        model[1].weight[0, 0, 0, 0] = float("nan")
    report = lip.model_report(model, (3, 6, 6), power_iters=20)
    json.dumps(report, allow_nan=False)
    good, bad = report["layers"]
    assert good["spectral_norm"] > 0 and bad["spectral_norm"] is None and bad["tn_bound"] is None
    assert report["lip_product_log10"] is None
    assert report["warnings"][0] == "1: non-finite values in weight; no norms for this layer"
    assert report["warnings"][1] == "lip_product_log10 is None: no spectral norm for 1"


def test_report_shows_what_each_bound_bounds_and_flags_a_low_tn(monkeypatch):
    """ScaledConv is twice its weight's conv: its bounds are the weight's and
    lie below the layer's norm, which the table must not present as a broken
    bound. A HOPM that stops short makes the plain conv's TN fall below its
    measured norm: recomputed, then flagged with a warning."""
    torch.manual_seed(2)
    model = nn.Sequential(ScaledConv(3, 4), nn.Conv2d(4, 4, 3, padding=1, bias=False))
    model[0].conv_role = "plain"
    real = power_method.hopm_batch

    def broken(tensor, vectors, **kw):
        values, vecs = real(tensor, vectors, **kw)
        return values * 0.25, vecs

    real_witnesses = power_method.fourier_witnesses

    def broken_floor(*args, **kw):  # (the certified floor would otherwise hold TN up)
        values, vecs = real_witnesses(*args, **kw)
        return values * 0.25, vecs

    monkeypatch.setattr(power_method, "hopm_batch", broken)
    monkeypatch.setattr(power_method, "fourier_witnesses", broken_floor)
    report = lip.model_report(model, (3, 8, 8), power_iters=300, power_tol=1e-9)
    scaled, plain = report["layers"]
    assert scaled["bounds_of"] == "weight" and plain["role"] == "untagged"
    assert plain["bounds_of"] == "layer" and plain["tn_check"] == "below_measured"
    assert plain["tn_bound"] < plain["spectral_norm"]
    assert [w for w in report["warnings"] if w.startswith("1: the TN estimate")]
    text = lip.format_report(report)
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert f"{scaled['f4_bound']:.3f} (weight)" in lines["0"] and "(layer)" not in lines["0"]
    assert f"{plain['tn_bound']:.3f}! (layer)" in lines["1"]
    assert "'(weight)' = the layer is more than its weight" in text and "! = still below it" in text


# ---------------------------------------------------------- table 9 and plot

def _record(normalizer, seed, conds, batchnorm=True, status="finished"):
    return {"status": status, "normalizer": normalizer, "normalizer_options": {}, "batchnorm": batchnorm,
            "dataset": "cifar10", "arch": "convnet", "train_method": "free", "train_eps": 8 / 255, "seed": seed,
            "lipschitz": {"layers": [{"name": f"l{i}", "channel_cond": c} for i, c in enumerate(conds)]}}


def test_table9_mean_improvement_over_vanilla():
    records = [
        _record("vanilla", 0, [4.0, 6.0]), _record("vanilla", 1, [6.0, 8.0]),   # mean per layer: 5, 7
        _record("convnorm", 0, [1.0, 1.0]), _record("convnorm", 1, [2.0, 1.0]),   # (4+6)/2=5 ; (3+6)/2=4.5
        _record("sn", 0, [5.0, 7.0]),                                             # 0
        _record("oni", 0, [1.0, 1.0], status="failed"),                           # ignored
    ]
    rows = {r["normalizer"]: r for r in lip.table9(records)}
    assert set(rows) == {"convnorm+BN", "sn+BN"}
    assert rows["convnorm+BN"]["mean_improvement"] == pytest.approx(4.75)
    assert rows["convnorm+BN"]["runs"] == 2
    assert rows["convnorm+BN"]["std"] == pytest.approx(math.sqrt(0.125))
    assert rows["sn+BN"]["mean_improvement"] == pytest.approx(0.0)
    ratio = {r["normalizer"]: r for r in lip.table9(records, mode="log_ratio")}
    want = (math.log10(5 / 1) + math.log10(7 / 1) + math.log10(5 / 2) + math.log10(7 / 1)) / 4
    assert ratio["convnorm+BN"]["mean_improvement"] == pytest.approx(want)
    assert "convnorm+BN" in lip.format_table9(lip.table9(records))
    # a key only some layers have falls back to channel_cond elsewhere
    records[2]["lipschitz"]["layers"][0]["channel_cond_preaffine"] = 1.0
    records[2]["lipschitz"]["layers"][0]["channel_cond"] = 3.0
    pre = {r["normalizer"]: r for r in lip.table9(records, key="channel_cond_preaffine")}
    assert pre["convnorm+BN"]["mean_improvement"] == pytest.approx(4.75)
    assert {r["normalizer"]: r for r in lip.table9(records)}["convnorm+BN"]["mean_improvement"] == pytest.approx(4.25)


def test_plot_layer_norms_writes_png(tmp_path):
    report = {"layers": [{"name": "a", "spectral_norm": 1.0}, {"name": "b", "spectral_norm": 2.0}]}
    path = lip.plot_layer_norms(report, tmp_path / "one.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = lip.plot_layer_norms({"vanilla": report, "sn": report}, tmp_path / "sub" / "two.png")
    assert path.stat().st_size > 1000
