"""``python -m robustbench_convnorm.lipschitz``: the report of a saved model,
Table 9 of a results directory, and every bad input ending in ONE line on
stderr that names the problem and the fix, exit status 2, no traceback."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustbench_convnorm import lipschitz as lip
from robustbench_convnorm.builders import build_run_model
from robustbench_convnorm.checkpoints import save_atomic
from robustbench_convnorm.config import config_from_dict, expand_grid, load_raw, to_dict

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m robustbench_convnorm.lipschitz: error: "


def _save_model(path, *, normalizer="tn", nan=False):
    raw = load_raw(ROOT / "configs" / "quickstart.yaml")
    raw["normalizers"] = [{"name": normalizer}]
    raw["model"]["width"] = 0.25
    cfg = expand_grid(config_from_dict(raw))[0].config
    meta = {"num_classes": 10, "in_channels": 1, "image_size": [8, 8], "mean": [0.3], "std": [0.3]}
    model = build_run_model(cfg, meta)
    state = model.state_dict()
    if nan:
        name = next(k for k in state if k.endswith("weight"))
        state[name] = state[name].clone()
        state[name].view(-1)[0] = float("nan")
    # the layout training/loop.py writes (only the keys load_model reads)
    save_atomic({"model": state, "run_config": to_dict(cfg), "model_meta": meta}, path)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    _save_model(path)
    return path


def _records_dir(root):
    for i, (name, conds) in enumerate((("vanilla", [4.0, 6.0]), ("convnorm", [1.0, 1.0]))):
        d = root / "runs" / f"run{i}"
        d.mkdir(parents=True)
        rec = {"status": "finished", "normalizer": name, "normalizer_options": {}, "batchnorm": True,
               "dataset": "cifar10", "arch": "convnet", "train_method": "free", "train_eps": 8 / 255, "seed": 0,
               "lipschitz": {"layers": [{"name": f"l{j}", "channel_cond": c} for j, c in enumerate(conds)]}}
        (d / "record.json").write_text(json.dumps(rec))
    return root


def run_error(argv, capsys, *words):
    """main(argv) for bad input: status 2, one stderr line naming the problem
    (``words``), nothing on stdout."""
    assert lip.main([str(a) for a in argv]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith(PROG), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ------------------------------------------------------------------ working

def test_cli_prints_the_table_of_a_saved_model(tmp_path, checkpoint, capsys):
    out_json, out_png = tmp_path / "lip.json", tmp_path / "lip.png"
    assert lip.main([str(checkpoint), "--power-iters", "50", "--json", str(out_json), "--plot", str(out_png)]) == 0
    text = capsys.readouterr().out
    assert "input shape [1, 8, 8], from the checkpoint" in text
    assert "layer3.shortcut.0" in text and "lip_product_log10" in text and "(layer)" in text
    report = json.loads(out_json.read_text())
    assert len(report["layers"]) == 9 and report["input_shape"] == [1, 8, 8] and report["warnings"] == []
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_table9_cli_reads_a_results_directory(tmp_path, capsys):
    assert lip.main([str(_records_dir(tmp_path)), "--table9"]) == 0
    out = capsys.readouterr().out
    assert "| cifar10 | convnet | free | convnorm+BN | 4.000 | 0.000 | 1 |" in out


# --------------------------------------------------------------- bad input

def test_missing_checkpoint(tmp_path, capsys):
    run_error([tmp_path / "nope.pt"], capsys, "nope.pt: no such file", "checkpoint.pt written by a run")


def test_a_directory_instead_of_a_checkpoint(tmp_path, checkpoint, capsys):
    run_error([tmp_path], capsys, "is a directory, not a checkpoint", "checkpoint.pt written by a run")
    run_error([checkpoint.parent], capsys, "is a directory; pass the checkpoint in it", str(checkpoint))
    results = _records_dir(tmp_path / "grid")
    run_error([results], capsys, "is a results directory; add --table9")


def test_a_plain_state_dict(tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Conv2d(3, 4, 3).state_dict(), path)
    run_error([path], capsys, "plain state_dict", "model_report(model, (C, H, W))")


def test_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a checkpoint\n")
    run_error([junk], capsys, "not a readable torch checkpoint", "checkpoint.pt written by a run")
    other = tmp_path / "other.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, other)
    run_error([other], capsys, "is not a harness checkpoint (no model, run_config, model_meta)")


def test_nan_weights(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    _save_model(path, nan=True)
    run_error([path], capsys, "NaN or inf", "diverged", "earlier checkpoint")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu(checkpoint, capsys):
    run_error([checkpoint, "--device", "cuda"], capsys, "--device cuda: torch sees no CUDA GPU", "--device cpu")


def test_device_names(checkpoint, capsys):
    run_error([checkpoint, "--device", "gpu0"], capsys, "'gpu0' is not a device name")
    run_error([checkpoint, "--device", "meta"], capsys, "only cpu and cuda")


def test_input_shape_the_model_cannot_take(checkpoint, capsys):
    run_error([checkpoint, "--input-shape", "5", "8", "8", "--power-iters", "2"], capsys,
              "the model does not run on an input of shape [1, 5, 8, 8]", "pass --input-shape C H W")


def test_outputs_that_cannot_be_written(tmp_path, checkpoint, capsys, monkeypatch):
    # checked before the report is computed
    run_error([checkpoint, "--json", tmp_path], capsys, "--json", "is a directory")
    run_error([checkpoint, "--plot", tmp_path / "lip.txt"], capsys, "not a figure format", ".png")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    run_error([checkpoint, "--json", a_file / "lip.json"], capsys, "is not a writable directory")
    # a folder this user may not write to (faked: CI runs as root, who may write anywhere)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(lip.cli.os, "access", lambda p, mode: str(p) != str(locked) and real_access(p, mode))
    run_error([checkpoint, "--json", locked / "lip.json"], capsys, "is not a writable directory")
    assert not (locked / "lip.json").exists()


def test_table9_bad_directories(tmp_path, capsys):
    run_error([tmp_path / "missing", "--table9"], capsys, "missing: no such directory", "a results directory")
    afile = tmp_path / "file.json"
    afile.write_text("{}")
    run_error([afile, "--table9"], capsys, "is a file, not a directory")
    run_error([tmp_path, "--table9"], capsys, "no runs/*/record.json in it")
    bad = tmp_path / "runs" / "r0"
    bad.mkdir(parents=True)
    (bad / "record.json").write_text("{truncated")
    assert lip.main([str(tmp_path), "--table9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("warning: ") and "unreadable" in err[0]
    assert err[1].startswith(PROG) and "none of its 1 records could be read" in err[1]


def test_argument_errors_are_argparse_messages(capsys):
    with pytest.raises(SystemExit) as exit_:
        lip.main(["x.pt", "--power-iters", "0"])
    assert exit_.value.code == 2
    assert "--power-iters: must be a positive integer, got 0" in capsys.readouterr().err


def test_the_real_command_line_prints_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "robustbench_convnorm.lipschitz", str(tmp_path / "missing.pt")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(PROG) and "missing.pt: no such file" in proc.stderr
