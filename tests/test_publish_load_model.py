"""Every model out: ``robustbench_convnorm.load_model`` gives back a run's
trained model, in eval mode and taking [0, 1] inputs, from a run directory,
a run id or a checkpoint, and torchattacks' own PGD on it reproduces the
harness's recorded PGD outcome example by example."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchattacks
import yaml

import robustbench_convnorm
from robustbench_convnorm import run
from robustbench_convnorm.checkpoints import CheckpointError
from robustbench_convnorm.config import config_from_dict
from robustbench_convnorm.loading import ModelNotFound, find_checkpoint

EPS, STEP, STEPS, BATCH = 8 / 255, 2 / 255, 5, 24
CONFIG = {
    "data": {"source": "synthetic", "options": {"n_train": 96, "n_test": 48, "size": 8, "num_classes": 4,
                                                "separation": 120}},
    "model": {"arch": "convnet", "width": 0.5},
    "normalizers": [{"name": "sn"}],
    "batchnorm": True,
    "train": {"method": "natural", "epochs": 3, "batch_size": 32, "lr": 0.1, "val_examples": 0},
    # random_start: false makes the harness's PGD deterministic, so torchattacks'
    # PGD on the loaded model must find the same adversarial inputs
    "eval": {"batch_size": BATCH, "lipschitz": False,
             "evaluators": [{"type": "clean"}, {"type": "pgd", "eps": EPS, "step": STEP, "steps": STEPS,
                                                "random_start": False, "name": "pgd5"}]},
    "device": "cpu", "threads": 1,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    raw = dict(CONFIG, output_dir=str(tmp / "out"))
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert run.main([str(path)]) == 0
    (run_dir,) = sorted((tmp / "out" / "runs").iterdir())
    return tmp / "out", run_dir


def test_pgd_of_torchattacks_on_the_loaded_model_gives_the_harness_number(trained):
    """Exact, not within a tolerance: with random_start false PGD has no
    randomness, and the examples (the record's per_example index, in that
    order) go through the model in the harness's batches of eval.batch_size,
    so every floating-point operation is the harness's. (With a random start
    both sides draw their own starts and would agree only statistically.)"""
    out, run_dir = trained
    model = robustbench_convnorm.load_model(run_dir)
    assert isinstance(model, torch.nn.Module) and not model.training
    record = json.loads((run_dir / "record.json").read_text())
    cfg = config_from_dict(record["config"])
    data = run.DataCache().get(cfg.data, record["seed"])
    table = pd.read_csv(run_dir / "per_example.csv")
    index = torch.tensor(table["index"].to_numpy())
    x, y = data.test_x[index].float() / 255, data.test_y[index]          # inputs in [0, 1]
    attack = torchattacks.PGD(model, eps=EPS, alpha=STEP, steps=STEPS, random_start=False)
    clean_ok, adv_ok = [], []
    for lo in range(0, len(y), BATCH):
        xb, yb = x[lo:lo + BATCH], y[lo:lo + BATCH]
        with torch.no_grad():
            clean_ok.append(model(xb).argmax(1) == yb)
        adv = attack(xb, yb)
        assert (adv - xb).abs().max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        with torch.no_grad():
            adv_ok.append(model(adv).argmax(1) == yb)
    clean_ok, adv_ok = torch.cat(clean_ok).numpy(), torch.cat(adv_ok).numpy()
    assert (clean_ok == table["clean_correct"].astype(bool).to_numpy()).all()
    assert (adv_ok == table["pgd5_adv_correct"].astype(bool).to_numpy()).all()
    robust = 100.0 * (clean_ok & adv_ok).mean()
    assert robust == record["metrics"]["pgd5_acc"]
    assert (clean_ok & ~adv_ok).any() and (clean_ok & adv_ok).any()  # PGD broke some examples, not all


def test_a_run_dir_a_run_id_and_a_checkpoint_give_the_same_model(trained):
    out, run_dir = trained
    by_dir = robustbench_convnorm.load_model(run_dir)
    by_id = robustbench_convnorm.load_model(run_dir.name, results_dir=out)
    by_file = robustbench_convnorm.load_model(run_dir / "checkpoint.pt")
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(by_dir(x), by_id(x)) and torch.equal(by_dir(x), by_file(x))
    assert by_id.run_config["normalizers"][0]["name"] == "sn"


def test_each_wrong_input_says_what_it_is_and_what_to_give(trained, tmp_path):
    out, run_dir = trained
    with pytest.raises(ModelNotFound, match="is a results directory, not a run"):
        find_checkpoint(out)
    with pytest.raises(ModelNotFound, match=r"no run 'x' in .*e\.g\. "):
        find_checkpoint("x", results_dir=out)
    with pytest.raises(ModelNotFound, match="did you mean"):
        find_checkpoint(run_dir.name[:-1] + "z", results_dir=out)
    with pytest.raises(ModelNotFound, match="give a run directory, a checkpoint path, or a run id with results_dir"):
        find_checkpoint(run_dir.name)
    with pytest.raises(ModelNotFound, match="holds no runs/ folder"):
        find_checkpoint(run_dir.name, results_dir=tmp_path)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "record.json").write_text("{}")
    with pytest.raises(ModelNotFound, match="a run without checkpoint.pt"):
        find_checkpoint(tmp_path / "half")
    damaged = tmp_path / "copy"
    damaged.mkdir()
    for name in ("checkpoint.pt", "checkpoint.pt.sha256"):
        (damaged / name).write_bytes((run_dir / name).read_bytes())
    with open(damaged / "checkpoint.pt", "r+b") as f:
        f.seek(200)
        f.write(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        robustbench_convnorm.load_model(damaged)


def test_integer_images_are_refused_and_the_readme_way_gives_the_recorded_accuracy(trained):
    """Issue 19, item 7: the harness's own uint8 test images fed as they are gave a silently
    wrong accuracy; they are refused, and the README's conversion gives the recorded number."""
    from robustbench_convnorm.data import load_full, to_float

    out, run_dir = trained
    model = robustbench_convnorm.load_model(run_dir)
    data = load_full(config_from_dict(model.run_config).data)        # as the README shows
    assert data.test_x.dtype == torch.uint8
    with pytest.raises(TypeError, match=r"float images in \[0, 1\], got a torch.uint8 tensor.*to_float"):
        model(data.test_x[:4])
    with pytest.raises(TypeError, match="torch.int64"):
        model(data.test_x[:4].long())
    record = json.loads((run_dir / "record.json").read_text())
    table = pd.read_csv(run_dir / "per_example.csv")
    index = torch.tensor(table["index"].to_numpy())
    with torch.no_grad():
        pred = model(to_float(data.test_x[index])).argmax(1)
    assert 100.0 * (pred == data.test_y[index]).float().mean().item() == pytest.approx(record["metrics"]["clean_acc"])
