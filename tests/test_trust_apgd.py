"""Issue 19, item 2: AutoAttack's APGD-CE + APGD-T part is an evaluator of its
own (``apgd_ce_t``), at AutoAttack's standard settings, named for what it is:
no table, record or export takes it for standard AutoAttack."""
import json

import pytest
import torch
import torchattacks
from torch import nn

from attacks import evaluate, get_evaluator
from leaderboard_records import EPS, make_record, write
from robustbench_convnorm.leaderboard import build_leaderboard


@pytest.fixture
def calls(monkeypatch):
    """The torchattacks components that run, with their settings; each returns the clean input."""
    seen = []
    keys = ("steps", "n_restarts", "loss", "thr_decr", "eot_iter", "n_target_classes")
    for cls in (torchattacks.APGD, torchattacks.APGDT, torchattacks.FAB, torchattacks.Square):
        def forward(self, images, labels, _name=cls.__name__):
            seen.append((_name, {k: getattr(self, k) for k in keys if hasattr(self, k)}, float(self.eps)))
            return images.clone()
        monkeypatch.setattr(cls, "forward", forward)
    return seen


def test_apgd_ce_t_runs_autoattacks_first_two_attacks_at_the_standard_settings(calls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10)).eval()
    x = torch.rand(8, 3, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    cfg = {"batch_size": 8, "evaluators": [{"type": "apgd_ce_t", "eps": 4 / 255}]}
    report = evaluate(model, (x * 255).to(torch.uint8), y, cfg, device="cpu", log=lambda s: None)
    assert [name for name, *_ in calls] == ["APGD", "APGDT"]                  # no FAB-T, no Square
    (_, ce, eps_ce), (_, t, eps_t) = calls
    assert ce["steps"] == 100 and ce["n_restarts"] == 1 and ce["loss"] == "ce" and ce["thr_decr"] == 0.75
    assert t["steps"] == 100 and t["n_target_classes"] == 9 and t["thr_decr"] == 0.75
    assert eps_ce == eps_t == pytest.approx(4 / 255)
    # its own name and type, and no AutoAttack version in its record
    assert "apgd_ce_t_eps4_acc" in report.metrics and not any(k.startswith("autoattack") for k in report.metrics)
    d = report.details["apgd_ce_t_eps4"]
    assert d["type"] == "apgd_ce_t" and "version" not in d and d["components"] == ["apgd-ce", "apgd-t"]
    assert "not AutoAttack" in d["part_of"]
    with pytest.raises(ValueError, match="version"):
        get_evaluator("apgd_ce_t", version="standard")


def test_apgd_ce_t_is_never_exported_or_titled_as_autoattack(tmp_path):
    res = tmp_path / "r"
    rec = make_record(normalizer="sn", extra_evals={"apgd_ce_t": {
        "kind": "whitebox", "type": "apgd_ce_t", "eps": EPS, "components": ["apgd-ce", "apgd-t"], "acc": 41.0}})
    rec["metrics"]["worst_case_whitebox_acc"] = 40.5
    write(res, rec)
    written = build_leaderboard(res, formats=["md"], plots=False, export=["robustbench"])
    md = written["md"].read_text()
    assert "APGD-CE+T" in md and "AutoAttack" not in md
    export = written["export_robustbench"]
    assert not list(export.glob("model_info/**/*.json"))   # no RobustBench entry without standard AutoAttack
    (skipped,) = json.loads((export / "not_exported.json").read_text())
    assert skipped["label"] == "sn+BN" and "standard AutoAttack" in skipped["reason"]


def test_fewer_iterations_or_targets_are_named_and_reach_torchattacks(calls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10)).eval()
    x = torch.rand(4, 3, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    ev = get_evaluator("apgd_ce_t", iterations=20, targets=3)
    assert ev.name == "apgd_ce_t_iterations20_targets3"
    out = ev.run(model, x, y, generator=torch.Generator().manual_seed(0), batch_size=4)
    (_, ce, _), (_, t, _) = calls
    assert ce["steps"] == 20 and t["steps"] == 20 and t["n_target_classes"] == 3
    assert out.info["iterations"] == 20 and out.info["targets"] == 3
    assert out.info["settings_of"] == "fewer iterations or targets than AutoAttack"
