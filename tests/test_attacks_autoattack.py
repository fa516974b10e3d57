"""AutoAttack runs the authors' standard settings (Croce & Hein 2020,
``version='standard'``, as RobustBench runs it), records them, and the
cheaper variant carries its own name."""
import pytest
import torch
import torchattacks
from torch import nn

from attacks import evaluate, get_evaluator

# The standard version, written out from the paper's code independently of attacks/autoattack.py:
# APGD-CE, APGD-T, FAB-T and Square in this order; 100 iterations; 1 restart each;
# 9 target classes (on 10 classes); Square with 5000 queries, p_init 0.8, no rescaled schedule.
STANDARD = [
    ("APGD", {"steps": 100, "n_restarts": 1, "loss": "ce", "thr_decr": 0.75, "eot_iter": 1}),
    ("APGDT", {"steps": 100, "n_restarts": 1, "n_target_classes": 9, "thr_decr": 0.75, "eot_iter": 1}),
    ("FAB", {"steps": 100, "n_restarts": 1, "n_target_classes": 9, "multi_targeted": True}),
    ("Square", {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "rescale_schedule": False, "loss": "margin"}),
]


@pytest.fixture
def calls(monkeypatch):
    """Record every torchattacks component that runs, with its settings at
    call time, and return the clean input instead of attacking."""
    seen = []
    for cls in (torchattacks.APGD, torchattacks.APGDT, torchattacks.FAB, torchattacks.Square):
        def forward(self, images, labels, _name=cls.__name__):
            keys = {k for _, want in STANDARD for k in want}
            seen.append((_name, {k: getattr(self, k) for k in keys if hasattr(self, k)},
                         float(self.eps), self.norm))
            return images.clone()
        monkeypatch.setattr(cls, "forward", forward)
    return seen


def _ten_class_case(n=8):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10)).eval()
    x = torch.rand(n, 3, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_the_settings_reaching_torchattacks_are_the_standard_ones(calls):
    model, x, y = _ten_class_case()
    ev = get_evaluator("autoattack")
    out = ev.run(model, x, y, generator=torch.Generator().manual_seed(0), batch_size=8)
    assert [name for name, *_ in calls] == [name for name, _ in STANDARD]
    for (name, got, eps, norm), (_, want) in zip(calls, STANDARD):
        assert {k: got[k] for k in want} == want, name
        assert eps == pytest.approx(8 / 255) and norm == "Linf"
    # and the record says so
    info = out.info
    assert info["version"] == "standard" and ev.name == "autoattack"
    assert info["components"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert info["iterations"] == 100 and info["targets"] == 9 and info["queries"] == 5000
    assert info["restarts"] == {"apgd-ce": 1, "apgd-t": 1, "fab-t": 1, "square": 1}


def test_the_fast_variant_has_its_own_name_and_record(calls):
    model, x, y = _ten_class_case()
    cfg = {"batch_size": 8, "evaluators": [{"type": "autoattack", "version": "fast"}]}
    report = evaluate(model, (x * 255).to(torch.uint8), y, cfg, device="cpu", log=lambda s: None)
    assert "autoattack_fast_acc" in report.metrics and "autoattack_acc" not in report.metrics
    d = report.details["autoattack_fast"]
    assert d["version"] == "fast" and d["components"] == ["apgd-ce", "apgd-t"]
    assert d["iterations"] == 100 and d["queries"] is None and d["targets"] == 9
    assert [name for name, *_ in calls] == ["APGD", "APGDT"]
    with pytest.raises(ValueError, match="'standard', 'fast'"):
        get_evaluator("autoattack", version="plus")


def test_fewer_classes_take_every_other_class_as_target(calls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    x = torch.rand(4, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    out = get_evaluator("autoattack").run(model, x, y, generator=torch.Generator().manual_seed(0), batch_size=4)
    assert out.info["targets"] == 4
    assert [got["n_target_classes"] for name, got, *_ in calls if name in ("APGDT", "FAB")] == [4, 4]
