"""Any model in: ``python -m robustbench_convnorm.evaluate --model module:factory
CONFIG`` evaluates an outside model on the trained runs' path (evaluators,
sanity checks, Lipschitz report), writes a normal record, per_example.csv
and run.log, and ranks it in the leaderboard beside the trained models.
Every bad model or checkpoint ends in one message and exit status 2."""
import json
import textwrap

import pandas as pd
import pytest
import torch
import yaml

from robustbench_convnorm import evaluate, run

FACTORIES = textwrap.dedent('''
    import torch
    from torch import nn

    def small():
        """A little conv net for 3x8x8 images of 4 classes, inputs in [0, 1]."""
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 64, 4))

    def wrong_classes():
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 10))

    def one_channel():
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(4))

    def not_a_module():
        return "a model"

    def broken():
        raise RuntimeError("no weights here")

    def returns_tuple():
        class Two(nn.Module):
            def forward(self, x):
                return x.mean(), x.sum()
        return Two()

    def nan_logits():
        class Nan(nn.Module):
            def forward(self, x):
                out = torch.zeros(x.shape[0], 4)
                out[-1, 2] = float("nan")   # one bad logit among finite ones
                return out
        return Nan()

    NOT_CALLABLE = 3
''')

CONFIG = {
    "data": {"source": "synthetic", "options": {"n_train": 64, "n_test": 48, "size": 8, "num_classes": 4}},
    "model": {"arch": "convnet", "width": 0.25},
    "normalizers": [{"name": "vanilla", "overrides": {"eval.lipschitz": False}}],  # the outside model's is checked
    "train": {"method": "natural", "epochs": 1, "batch_size": 32, "val_examples": 0},
    "eval": {"batch_size": 48, "evaluators": [{"type": "clean"},
                                              {"type": "pgd", "eps": "8/255", "step": "2/255", "steps": 2}]},
    "device": "cpu", "threads": 1,
}


@pytest.fixture
def models_on_path(tmp_path, monkeypatch):
    (tmp_path / "outside_models.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _config(tmp_path, out="out"):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(dict(CONFIG, output_dir=str(tmp_path / out))))
    return path


def test_an_outside_model_gets_a_record_and_a_leaderboard_row_beside_a_trained_one(models_on_path, monkeypatch):
    from robustbench_convnorm.leaderboard import build

    monkeypatch.setattr(build, "write_plots", lambda lb, out: {})  # the tables are checked, not the plots (3 s)
    tmp = models_on_path
    cfg = _config(tmp)
    assert run.main([str(cfg)]) == 0                                            # one trained model
    weights = tmp / "weights.pt"
    model = __import__("outside_models").small()
    torch.save(model.state_dict(), weights)
    assert evaluate.main(["--model", "outside_models:small", "--checkpoint", str(weights), "--name", "mine",
                          str(cfg)]) == 0
    runs = {p.parent.name: json.loads(p.read_text()) for p in (tmp / "out" / "runs").glob("*/record.json")}
    (ext_id,) = [r for r in runs if "-external-" in r]
    rec = runs[ext_id]
    assert ext_id.startswith("synthetic-external-mine-")
    assert rec["status"] == "finished" and rec["train_method"] == "external" and rec["normalizer"] == "mine"
    assert rec["external"]["model"] == "outside_models:small"
    assert rec["external"]["checkpoint_sha256"] == __import__("hashlib").sha256(weights.read_bytes()).hexdigest()
    # the same evaluation as trained runs: evaluators, sanity checks (probes ran), Lipschitz report
    assert set(rec["evaluations"]) == {"clean", "pgd2"}
    assert rec["lipschitz"]["layers"][0]["role"] == "untagged" and "lip_product_log10" in rec["metrics"]
    ext_dir = tmp / "out" / "runs" / ext_id
    table = pd.read_csv(ext_dir / "per_example.csv")
    assert len(table) == 48 and {"clean_correct", "pgd2_correct"} <= set(table.columns)
    # its clean accuracy is the model's own on the test split
    data = run.DataCache().get(run.load_config(cfg).data, 0)
    with torch.no_grad():
        acc = 100.0 * (model.eval()(data.test_x.float() / 255).argmax(1) == data.test_y).float().mean().item()
    assert rec["metrics"]["clean_acc"] == pytest.approx(acc)
    log = (ext_dir / "run.log").read_text()
    assert "[eval] pgd2" in log and "epoch" not in log
    # ranked in the same table as the trained model
    board = pd.read_csv(tmp / "out" / "leaderboard.csv")
    assert set(board["dataset"]) == {"synthetic"} and len(board) == 2
    assert set(board["train_method"]) == {"natural", "external"}
    assert "mine" in set(board["model"]) and board["rank"].notna().all()
    # evaluated again, the same model keeps its run id (its record is replaced); other weights get their own
    loaded = run.load_config(cfg)
    assert evaluate.external_run_id(loaded, "outside_models:small", rec["external"]["checkpoint_sha256"],
                                    "mine") == ext_id
    assert evaluate.external_run_id(loaded, "outside_models:small", "0" * 64, "mine") != ext_id


BAD = [
    (["--model", "outside_models"], "expected package.module:factory"),
    (["--model", "no_such_module_here:f"], "no module named 'no_such_module_here'"),
    (["--model", "outside_models:smal"], "has no 'smal' (did you mean 'small'?)"),
    (["--model", "outside_models:NOT_CALLABLE"], "not a function or class"),
    (["--model", "outside_models:broken"], "calling it failed (RuntimeError: no weights here)"),
    (["--model", "outside_models:not_a_module"], "not a torch.nn.Module"),
    (["--model", "outside_models:wrong_classes"], "expected (2, 4), one logit for each of the 4 classes"),
    (["--model", "outside_models:one_channel"], "the model fails on a batch of synthetic images, shape (2, 3, 8, 8)"),
    (["--model", "outside_models:returns_tuple"], "it must return a tensor of logits"),
    (["--model", "outside_models:nan_logits"], "the model returns NaN or infinite logits"),
    (["--model", "outside_models:small", "--checkpoint", "missing.pt"], "no such file"),
    (["--model", "outside_models:small", "--checkpoint", "{wrong}"], "does not fit the model"),
    (["--model", "outside_models:small", "--checkpoint", "{text}"], "cannot be read as weights"),
    (["--model", "outside_models:small", "--set", "data.source=synthtic"], "unknown data source 'synthtic'"),
    (["--model", "outside_models:small", "--set", "eval.evaluators=[{{type: pgdd}}]"], "unknown evaluator 'pgdd'"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[m for _, m in BAD])
def test_each_bad_model_is_one_message_and_status_2(models_on_path, capsys, argv, message):
    tmp = models_on_path
    torch.save({"weight": torch.zeros(2)}, tmp / "wrong.pt")
    (tmp / "text.pt").write_text("not weights")
    argv = [a.format(wrong=tmp / "wrong.pt", text=tmp / "text.pt") for a in argv]
    assert evaluate.main(argv + [str(_config(tmp))]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp / "out" / "runs").exists() or not any((tmp / "out" / "runs").iterdir())  # nothing recorded
