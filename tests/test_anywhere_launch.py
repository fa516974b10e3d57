"""--launcher slurm on a machine without SLURM: a dry run needs none, a real
submission says what is missing in one line, and ``device: auto`` asks the
cluster (sinfo), not the submitting host, whether its tasks get a GPU.

PATH is set to a folder holding only what each test puts there, so these
tests prove the same thing on a machine where SLURM is installed."""
import stat

import pytest

from robustbench_convnorm import run

from scaleout_util import write_config


def _path_with(tmp_path, monkeypatch, **scripts):
    """PATH = a folder holding only these shell scripts (name -> body)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, body in scripts.items():
        exe = folder / name
        exe.write_text(f"#!/bin/sh\n{body}\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(folder))
    return folder


def test_a_dry_run_needs_no_slurm_and_a_submission_says_what_is_missing(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "grid.yaml", tmp_path / "out")
    _path_with(tmp_path, monkeypatch)
    assert run.main([str(cfg), "--launcher", "slurm", "--dry-run", "--partition", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "--launcher slurm would submit 1 task(s)" in out and "slurm_partition: gpu" in out
    # a misspelled parameter is still caught without SLURM
    assert run.main([str(cfg), "--launcher", "slurm", "--dry-run", "--set",
                     "launcher.executor={slurm_partiton: gpu}"]) == 2
    assert "did you mean 'slurm_partition'?" in capsys.readouterr().err
    assert run.main([str(cfg), "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "this machine has no SLURM (srun is not on PATH)" in err and "--launcher local" in err, err
    assert not (tmp_path / "out" / "launcher").exists()


@pytest.mark.parametrize("gres, gpus", [("(null)", 0), ("gpu:a100:4\n(null)", 1)])
def test_device_auto_follows_the_clusters_gpus_not_the_submitting_hosts(tmp_path, monkeypatch, capsys, gres,
                                                                         gpus):
    cfg = write_config(tmp_path / "grid.yaml", tmp_path / "out", device="auto")
    _path_with(tmp_path, monkeypatch, sinfo=f"printf '{gres}\\n'")
    assert run.main([str(cfg), "--launcher", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("gpus_per_node: 1" in out) == (gpus == 1), out
    assert f"({gpus} GPU(s) per task: device: auto, and sinfo lists {'GPUs' if gpus else 'no GPU'} on " in out


def test_device_auto_without_sinfo_says_what_to_set(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "grid.yaml", tmp_path / "out", device="auto")
    _path_with(tmp_path, monkeypatch)
    assert run.main([str(cfg), "--launcher", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "gpus_per_node: 1" in out and "set --gpus-per-task 0 (or device: cpu)" in out, out
    assert run.main([str(cfg), "--launcher", "slurm", "--dry-run", "--gpus-per-task", "0"]) == 0
    assert "gpus_per_node" not in capsys.readouterr().out
