"""The run command end to end: grid, records, resume after a kill, failure
handling, re-evaluation, determinism, and the error paths."""
import pytest
import torch
from torch import nn

import cli_util
from cli_util import ROOT, cli, comparable, records

from robustbench_convnorm import run
from robustbench_convnorm.checkpoints import load_checkpoint
from robustbench_convnorm.normalizers import Normalizer, register_normalizer
from robustbench_convnorm.training.loop import KILL_AFTER_EPOCH_ENV

TINY = {
    "data": {"source": "synthetic", "options": {"n_train": 96, "n_test": 48, "size": 8, "num_classes": 4},
             "augment": {"crop_padding": 1, "flip": True}},
    "model": {"arch": "convnet", "width": 0.5},
    "normalizers": [{"name": "vanilla"}],
    "train": {"method": "free", "epochs": 3, "batch_size": 32, "lr": 0.05, "replays": 2, "schedule": "cosine",
              "val_examples": 16, "val_pgd_steps": 2},
    "eval": {"batch_size": 48, "lipschitz": False,
             "evaluators": [{"type": "clean"}, {"type": "fgsm", "eps": "8/255"},
                            {"type": "pgd", "eps": "8/255", "step": "2/255", "steps": 3},
                            {"type": "simba", "n_images": 8, "step": 0.2, "max_iters": 20}]},
    "seeds": [0],
    "device": "cpu",
}


def write_config(tmp_path, out, **changes):
    return cli_util.write_config(tmp_path / f"{out}.yaml", tmp_path / out, TINY, **changes)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    straight = write_config(tmp_path, "straight")
    killed = write_config(tmp_path, "killed")
    assert cli(straight).returncode == 0
    first = cli(killed, **{KILL_AFTER_EPOCH_ENV: "1"})
    assert first.returncode == -9                                   # SIGKILLed after epoch 1's checkpoint
    (rec,) = records(tmp_path / "killed").values()
    assert rec["status"] == "running"
    second = cli(killed)
    assert second.returncode == 0, second.stderr
    assert "resuming from epoch 1/3" in second.stdout
    (a,), (b,) = records(tmp_path / "straight").values(), records(tmp_path / "killed").values()
    assert comparable(a) == comparable(b)
    ca = load_checkpoint(next((tmp_path / "straight").glob("runs/*/checkpoint.pt")))
    cb = load_checkpoint(next((tmp_path / "killed").glob("runs/*/checkpoint.pt")))
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    assert torch.equal(ca["method"]["delta"], cb["method"]["delta"])
    # a finished run is skipped on a rerun
    again = cli(killed)
    assert again.returncode == 0 and "[skip]" in again.stdout


class _TriggerConv(nn.Conv2d):
    """A conv that counts its training forwards and, from the ``at``-th on,
    applies ``trigger`` to its output (3 training forwards per epoch here)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, *, at, trigger):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.calls, self.at, self.trigger = 0, at, trigger

    def forward(self, x):
        self.calls += self.training
        out = super().forward(x)
        return self.trigger(self, out) if self.calls >= self.at else out


def _ctrl_c(conv, out):
    if conv.calls == conv.at and conv.conv_role == "stem":
        raise KeyboardInterrupt
    return out


@register_normalizer("test_nan_bomb")
class NaNBomb(Normalizer):
    """NaN from the 5th training forward on: a loss that blows up in epoch 2."""

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return _TriggerConv(in_channels, out_channels, kernel_size, stride, padding, at=5,
                            trigger=lambda conv, out: out * float("nan"))


@register_normalizer("test_ctrl_c")
class CtrlC(Normalizer):
    """KeyboardInterrupt in the 5th training forward (epoch 2), like Ctrl-C."""

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return _TriggerConv(in_channels, out_channels, kernel_size, stride, padding, at=5, trigger=_ctrl_c)


def test_nan_fails_that_run_and_the_grid_goes_on(tmp_path, capsys):
    cfg = write_config(tmp_path, "nan", normalizers=[{"name": "test_nan_bomb"}, {"name": "vanilla"}],
                       train__epochs=2, train__replays=1)
    code = run.main([str(cfg)])
    assert code == 1
    recs = {r["normalizer"]: r for r in records(tmp_path / "nan").values()}
    bomb, good = recs["test_nan_bomb"], recs["vanilla"]
    assert bomb["status"] == "failed" and bomb["error"]["epoch"] == 2
    assert "non-finite training loss" in bomb["error"]["reason"]
    assert good["status"] == "finished" and "clean_acc" in good["metrics"]
    ckpt = load_checkpoint(next((tmp_path / "nan").glob("runs/*test_nan_bomb*/checkpoint.pt")))
    assert ckpt["epoch"] == 1                                      # the last good checkpoint is kept
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert (tmp_path / "nan" / "leaderboard.csv").exists()
    summary = capsys.readouterr().out.split("done: ", 1)[1]          # the console says why, not just "1 not"
    assert f"failed: {bomb['run_id']}: non-finite training loss" in summary


def test_same_seed_same_record_and_eval_only_reproduces(tmp_path):
    a = write_config(tmp_path, "a", train__epochs=1)
    b = write_config(tmp_path, "b", train__epochs=1)
    assert run.main([str(a)]) == 0 and run.main([str(b)]) == 0
    (ra,), (rb,) = records(tmp_path / "a").values(), records(tmp_path / "b").values()
    assert comparable(ra) == comparable(rb)
    assert ra["status"] == "finished" and 0 <= ra["metrics"]["pgd3_acc"] <= ra["metrics"]["clean_acc"]
    per_example = (tmp_path / "a" / "runs" / ra["run_id"] / "per_example.csv").read_text()
    assert run.main([str(a), "--eval-only"]) == 0
    (again,) = records(tmp_path / "a").values()
    assert again["metrics"] == ra["metrics"] and again["flags"] == ra["flags"]
    assert (tmp_path / "a" / "runs" / ra["run_id"] / "per_example.csv").read_text() == per_example


def test_eval_only_without_checkpoint_is_a_failed_record(tmp_path):
    cfg = write_config(tmp_path, "none")
    assert run.main([str(cfg), "--eval-only"]) == 1
    (rec,) = records(tmp_path / "none").values()
    assert rec["status"] == "failed" and "train the run first" in rec["error"]["reason"]


def test_dry_run_list_and_config_errors(tmp_path, capsys):
    cfg = write_config(tmp_path, "dry", seeds=[0, 1, 2])
    assert run.main([str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 run(s)" in out and not (tmp_path / "dry").exists()      # nothing trained or written
    assert run.main(["--list"]) == 0
    out = capsys.readouterr().out
    for word in ("normalizers:", "convnorm", "evaluators:", "simba", "models:", "resnet18", "data sources:", "imagefolder"):
        assert word in out
    bad = write_config(tmp_path, "bad", normalizers=[{"name": "convnrom"}])
    assert run.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown normalizer 'convnrom' (did you mean 'convnorm'?)" in err and "registered:" in err
    assert run.main([str(cfg), "--set", "eval.evaluators=[{type: pgd, stepz: 3}]"]) == 2
    assert "no option 'stepz'" in capsys.readouterr().err
    assert run.main([str(cfg), "--set", "train.epochs=-1"]) == 2
    assert "train.epochs: -1 is out of range" in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    """The README's demo: every normalizer trains with free AT, is evaluated, and the leaderboard is written."""
    out = tmp_path / "quick"
    proc = cli(ROOT / "configs" / "quickstart.yaml", "--set", f"output_dir={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = records(out)
    assert len(recs) == 8 and all(r["status"] == "finished" for r in recs.values())
    for r in recs.values():
        m = r["metrics"]
        for key in ("clean_acc", "fgsm_acc", "pgd10_acc", "pgd20_acc", "worst_case_acc", "simba_success_rate"):
            assert key in m, (r["run_id"], key)
        assert m["pgd20_acc"] <= m["clean_acc"]
        assert r["lipschitz"] and "lip_product_log10" in m
    for name in ("leaderboard.csv", "leaderboard_runs.csv", "leaderboard.md"):
        assert (out / name).exists()
    assert list(out.glob("*.png"))


def test_ctrl_c_stops_cleanly_and_the_run_resumes(tmp_path):
    cfg = write_config(tmp_path, "ctrlc", normalizers=[{"name": "test_ctrl_c"}, {"name": "vanilla"}],
                       train__epochs=2, train__replays=1)
    assert run.main([str(cfg)]) == 130                          # the grid stops: vanilla never starts
    recs = records(tmp_path / "ctrlc")
    (rec,) = recs.values()
    assert rec["status"] == "interrupted" and rec["error"]["epoch"] == 2
    ckpt = load_checkpoint(next((tmp_path / "ctrlc").glob("runs/*/checkpoint.pt")))
    assert ckpt["epoch"] == 1 and not ckpt["finished"]           # the last epoch's checkpoint is kept
    assert not list((tmp_path / "ctrlc").rglob("*.tmp"))         # nothing half-written
    assert run.main([str(cfg)]) == 0                             # a rerun resumes and finishes the grid
    assert all(r["status"] == "finished" for r in records(tmp_path / "ctrlc").values())
