"""Fault injection on the run command: workers that lose their lock stop
without writing; Ctrl-C says which checkpoint is really kept and a second
one during the leaderboard build exits 130 cleanly. The slow tests do it for
real: two and three workers on one output_dir train every run exactly once,
a SIGKILLed holder's run is taken over, a SIGKILL at each point inside a
checkpoint write resumes to the uninterrupted result, and two SIGINTs."""
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import torch
from torch import nn

from integrity_common import TINY, ROOT, cli, env, records, run_dirs, same_weights, write_config
from robustbench_convnorm import atomic, run
from robustbench_convnorm.checkpoints import KILL_IN_CHECKPOINT_ENV, load_checkpoint
from robustbench_convnorm.config import config_from_dict, expand_grid
from robustbench_convnorm.lock import LOCK_FILE
from robustbench_convnorm.normalizers import Normalizer, register_normalizer
from robustbench_convnorm.records import read_record
from robustbench_convnorm.training.loop import KILL_AFTER_EPOCH_ENV


def test_a_worker_whose_lock_was_taken_over_stops_without_writing(tmp_path):
    raw = json.loads(json.dumps(TINY))
    raw["train"]["epochs"] = 3
    (spec,) = expand_grid(config_from_dict({**raw, "output_dir": str(tmp_path)}))
    lines = []

    def log(line):
        lines.append(line)
        if "epoch 1/3:" in line:  # this worker stalled; another one took the run over
            holder = json.loads((spec.run_dir / LOCK_FILE).read_text())
            holder.update(token="the-new-holder", pid=os.getppid(), owner="the new holder")
            atomic.write_json(spec.run_dir / LOCK_FILE, holder)

    out = run.execute_run(spec, torch.device("cpu"), run.DataCache(), log=log)
    assert out["status"] == run.LOCKED and out["holder"]["owner"] == "the new holder"
    assert not any("epoch 2/3" in line for line in lines)              # it stopped at once...
    assert not (spec.run_dir / "checkpoint.pt").exists()               # ...before writing epoch 1's checkpoint
    assert read_record(spec.run_dir)["status"] == "running"            # the record is the new holder's to write
    assert json.loads((spec.run_dir / LOCK_FILE).read_text())["token"] == "the-new-holder"


class _CountingConv(nn.Conv2d):
    """Raises KeyboardInterrupt (Ctrl-C) in its ``at``-th training forward (the stem's)."""

    def __init__(self, *args, at, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.at = 0, at

    def forward(self, x):
        self.calls += self.training
        if self.calls == self.at and self.conv_role == "stem":
            raise KeyboardInterrupt
        return super().forward(x)


@register_normalizer("test_ctrl_c_in_epoch_4")
class CtrlCInEpoch4(Normalizer):
    """Ctrl-C in the 10th training forward: epoch 4 with TINY's 3 batches of one replay."""

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return _CountingConv(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False,
                             at=10)


def test_ctrl_c_names_the_checkpoint_really_kept_and_a_second_one_in_the_leaderboard_exits_130(
        tmp_path, capsys, monkeypatch):
    import robustbench_convnorm.leaderboard as leaderboard

    cfg = write_config(tmp_path, "c", normalizers=[{"name": "test_ctrl_c_in_epoch_4"}], train__epochs=4,
                       train__checkpoint_every=2)

    def ctrl_c_again(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(leaderboard, "build_leaderboard", ctrl_c_again)
    try:
        code = run.main([str(cfg)])
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl-C escaped as a traceback")
    assert code == 130
    shown = capsys.readouterr()
    # epochs 1-3 were trained, but with checkpoint_every 2 only epoch 2's checkpoint is on disk
    assert "interrupted in epoch 4; the checkpoint of epoch 2 is kept" in shown.out
    assert "leaderboard build stopped by Ctrl-C" in shown.err
    (rec,) = records(tmp_path / "c").values()
    assert rec["status"] == "interrupted" and rec["error"]["checkpoint_epoch"] == 2
    assert load_checkpoint(next((tmp_path / "c").glob("runs/*/checkpoint.pt")))["epoch"] == 2


# ------------------------------------------------------------------ slow: real processes

def _epochs_trained(stdout):
    """{run_id: epoch lines} from one worker's console."""
    count, current = Counter(), None
    for line in stdout.splitlines():
        header = re.match(r"\[\d+/\d+\] (\S+)", line)
        if header:
            current = header.group(1)
        elif re.match(r"\s+epoch \d+/\d+:", line):
            count[current] += 1
    return count


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_concurrent_workers_train_every_run_exactly_once(tmp_path, workers):
    cfg = write_config(tmp_path, "shared", normalizers=[
        {"name": "vanilla"}, {"name": "vanilla", "label": "bn", "overrides": {"batchnorm": True}},
        {"name": "sn"}, {"name": "ocnn"}])
    procs = [subprocess.Popen([sys.executable, "-m", "robustbench_convnorm.run", str(cfg)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
             for _ in range(workers)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in err, out[-2000:] + err[-2000:]
    trained = sum((_epochs_trained(out) for out, _ in outs), Counter())
    recs = records(tmp_path / "shared")
    assert len(recs) == 4 and all(r["status"] == "finished" for r in recs.values())
    assert trained == {run_id: 2 for run_id in recs}, trained          # every epoch of every run once
    pids = {p.pid for p in procs}
    assert all(r["worker"]["pid"] in pids for r in recs.values())
    assert any("is being worked on by pid" in out for out, _ in outs)  # a live lock was met and named
    assert not list((tmp_path / "shared").rglob("*.tmp")) and not list((tmp_path / "shared").rglob(LOCK_FILE))


@pytest.mark.slow
def test_a_killed_holders_run_is_taken_over_by_the_next_worker(tmp_path):
    cfg = write_config(tmp_path, "k")
    first = cli(cfg, **{KILL_AFTER_EPOCH_ENV: 1})
    assert first.returncode == -signal.SIGKILL
    (run_dir,) = run_dirs(tmp_path / "k")
    dead = json.loads((run_dir / LOCK_FILE).read_text())["pid"]
    second = cli(cfg)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"took over the lock of pid {dead}" in second.stdout and "is gone" in second.stdout
    assert "resuming from epoch 1/2" in second.stdout
    (rec,) = records(tmp_path / "k").values()
    assert rec["status"] == "finished" and rec["worker"]["pid"] != dead


@pytest.mark.slow
def test_sigkill_at_each_point_of_a_checkpoint_write_resumes_to_the_same_result(tmp_path):
    straight = write_config(tmp_path, "straight", train__epochs=3)
    assert cli(straight).returncode == 0
    (want,) = records(tmp_path / "straight").values()
    want_weights = load_checkpoint(run_dirs(tmp_path / "straight")[0] / "checkpoint.pt")["model"]
    for point in ("written", "listed", "rotated"):
        cfg = write_config(tmp_path, point, train__epochs=3)
        killed = cli(cfg, **{KILL_IN_CHECKPOINT_ENV: f"2:{point}"})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
        again = cli(cfg)
        assert again.returncode == 0, (point, again.stdout[-2000:] + again.stderr[-2000:])
        (got,) = records(tmp_path / point).values()
        assert got["metrics"] == want["metrics"], point
        (run_dir,) = run_dirs(tmp_path / point)
        assert same_weights(load_checkpoint(run_dir / "checkpoint.pt")["model"], want_weights), point
        assert not list(run_dir.glob("*.corrupt-*")) and not list(run_dir.glob("*.tmp")), point


_SLOW_LEADERBOARD = """
import signal, sys, time
# a shell without job control starts background jobs with SIGINT ignored, and so would this
# child when the tests run in the background: take Python's Ctrl-C handler back
signal.signal(signal.SIGINT, signal.default_int_handler)
import robustbench_convnorm.leaderboard as leaderboard
def slow(output_dir):
    print("BUILDING-LEADERBOARD", flush=True)
    for _ in range(1200):  # short naps, like work: a signal that lands in another thread still counts
        time.sleep(0.1)
leaderboard.build_leaderboard = slow
from robustbench_convnorm import run
sys.exit(run.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_real_sigints_training_then_leaderboard_exit_130_without_a_traceback(tmp_path):
    cfg = write_config(tmp_path, "sig", train__epochs=200)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_LEADERBOARD, str(cfg)], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    seen, errors = [], []
    threading.Thread(target=lambda: [(lines.put(line), seen.append(line)) for line in proc.stdout],
                     daemon=True).start()
    threading.Thread(target=lambda: [errors.append(line) for line in proc.stderr], daemon=True).start()

    def wait_for(text, seconds=300):
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                if text in lines.get(timeout=1):
                    return
            except queue.Empty:
                assert proc.poll() is None, f"exited before printing {text!r}"
        pytest.fail(f"no {text!r} within {seconds}s")
    try:
        wait_for("epoch 1/200:")
        proc.send_signal(signal.SIGINT)
        wait_for("BUILDING-LEADERBOARD")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.5)  # let the readers drain the pipes
    err = "".join(errors)
    assert code == 130, "".join(seen)[-3000:] + err[-3000:]
    assert "Traceback" not in err and "leaderboard build stopped by Ctrl-C" in err, err
    (rec,) = records(tmp_path / "sig").values()
    assert rec["status"] == "interrupted"
