"""Issue 20, item 8: optional TensorBoard event files beside train_log.csv and
run.log (per-epoch scalars, the evaluation's numbers); nothing when off, and
a clear message (not a failure) when the package is missing."""
import sys

import pytest
import yaml

from robustbench_convnorm import run, tensorboard

TINY = {
    "data": {"source": "synthetic", "options": {"n_train": 64, "n_test": 16, "size": 8, "num_classes": 4}},
    "model": {"arch": "convnet", "width": 0.25},
    "normalizers": [{"name": "vanilla"}],
    "train": {"method": "natural", "epochs": 2, "batch_size": 32, "val_examples": 16, "val_pgd_steps": 1},
    "eval": {"batch_size": 16, "lipschitz": False, "checks": False,
             "evaluators": [{"type": "clean"}, {"type": "fgsm", "eps": "8/255"}]},
    "device": "cpu", "threads": 1, "speed": {"channels_last": "off"},
}


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    from robustbench_convnorm.leaderboard import build

    monkeypatch.setattr(build, "write_plots", lambda lb, out: {})


def _run(tmp_path, on):
    raw = dict(TINY, output_dir=str(tmp_path / "out"), logging={"tensorboard": on})
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert run.main([str(cfg)]) == 0
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    return run_dir


def test_event_files_hold_each_epoch_and_the_evaluation(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package (requirements-cpu.txt) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = _run(tmp_path, True)
    events = EventAccumulator(str(run_dir / tensorboard.DIR))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "train/lr", "val/clean_acc", "val/pgd_acc"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    import csv
    rows = list(csv.DictReader((run_dir / "train_log.csv").open()))
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([float(r["loss"]) for r in rows])
    import json
    record = json.loads((run_dir / "record.json").read_text())
    for key in ("clean_acc", "fgsm_acc"):
        (event,) = events.Scalars(f"eval/{key}")
        assert event.step == 2 and event.value == pytest.approx(record["metrics"][key])
    assert "eval/fgsm/seconds" in tags


def test_off_writes_nothing_and_a_missing_package_is_named_not_fatal(tmp_path, monkeypatch, capsys):
    run_dir = _run(tmp_path / "off", False)
    assert not (run_dir / tensorboard.DIR).exists()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails as if not installed
    run_dir = _run(tmp_path / "missing", True)
    assert not (run_dir / tensorboard.DIR).exists()
    err = capsys.readouterr().err
    assert "tensorboard package is not installed (pip install tensorboard)" in err
    assert "tensorboard package is not installed" in (run_dir / "run.log").read_text()
