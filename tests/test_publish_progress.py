"""Progress a person can follow, and a log per run: the grid's ``[k/n] run
elapsed eta`` lines, an epoch's progress lines when the output is not a
terminal, and runs/<id>/run.log holding its own run's lines (and only
those), appended by each session."""
import re

import yaml

from robustbench_convnorm import progress, run
from robustbench_convnorm.progress import GridProgress, duration, track_epoch

TINY = {
    "data": {"source": "synthetic", "options": {"n_train": 96, "n_test": 32, "size": 8, "num_classes": 4}},
    "model": {"arch": "convnet", "width": 0.25},
    "normalizers": [{"name": "vanilla"}, {"name": "sn"}],
    "train": {"method": "natural", "epochs": 2, "batch_size": 32, "val_examples": 0},
    "eval": {"batch_size": 32, "lipschitz": False,
             "evaluators": [{"type": "clean"}, {"type": "fgsm", "eps": "8/255"}]},
    "device": "cpu", "threads": 1,
}


def test_durations_read_as_a_person_writes_them():
    assert [duration(s) for s in (0, 45.4, 192, 599, 600, 900, 3599, 3600, 7500)] == \
        ["0s", "45s", "3m12s", "9m59s", "10m", "15m", "60m", "1h00m", "2h05m"]
    assert duration(None) == duration(float("inf")) == "?"


def test_grid_eta_is_the_mean_of_the_runs_done_times_the_runs_left():
    now = [100.0]
    grid = GridProgress(4, clock=lambda: now[0])
    assert grid.line(1, "a") == "[1/4] a  elapsed 0s  eta ?"          # nothing done: no guess
    now[0] += 60
    grid.ran(60)
    assert grid.line(2, "b") == "[2/4] b  elapsed 1m00s  eta 3m00s"   # 3 runs left at 60 s
    now[0] += 1
    assert grid.line(3, "c") == "[3/4] c  elapsed 1m01s  eta 2m00s"   # a skipped run adds no duration
    now[0] += 180
    grid.ran(180)
    assert grid.line(4, "d") == "[4/4] d  elapsed 4m01s  eta 2m00s"   # mean 120 s, one run left


class _Labels:
    """Labels that have a length and nothing else: the tracker may count the
    batch, never read its values (which would synchronise with a GPU)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getattr__(self, name):
        raise AssertionError(f"the progress tracker read the labels' {name}")


def test_redirected_epoch_progress_is_a_line_every_interval_with_rate_and_eta():
    now = [0.0]
    lines = []
    batches = [(None, _Labels(32))] * 5

    def work():
        for _ in track_epoch(iter(batches), 5, "  epoch 1/3", lines.append, interval=10, clock=lambda: now[0]):
            now[0] += 4                       # each batch takes 4 s
    work()
    # a line once 10 s have passed since the last (after batches 3 and 5, but not after the last batch)
    assert lines == ["  epoch 1/3: 3/5 batches, 8 images/s, eta 8s"]


def _config(tmp_path, **changes):
    raw = dict(TINY, output_dir=str(tmp_path / "out"), **changes)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_each_run_log_holds_its_own_runs_lines_and_a_rerun_appends(tmp_path, capsys, monkeypatch):
    from robustbench_convnorm.leaderboard import build

    monkeypatch.setattr(build, "write_plots", lambda lb, out: {})  # no plot is looked at here (3 s)
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")  # a progress line after every batch but an epoch's last
    cfg = _config(tmp_path)
    assert run.main([str(cfg)]) == 0
    out = capsys.readouterr().out
    ids = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    assert len(ids) == 2
    # the grid's lines: a guess only once a run has finished
    assert re.search(r"^\[1/2\] \S+  elapsed \d+s  eta \?$", out, re.M)
    assert re.search(r"^\[2/2\] \S+  elapsed \d+s  eta \d+s$", out, re.M)
    # redirected output (pytest's capture is no terminal): periodic lines with rate and eta, per epoch
    assert re.search(r"^  epoch 2/2: 2/3 batches, [\d,]+ images/s, eta \d+s$", out, re.M)
    for run_id in ids:
        other = next(i for i in ids if i != run_id)
        log = (tmp_path / "out" / "runs" / run_id / "run.log").read_text()
        lines = log.splitlines()
        assert f"=== {run_id}: train and evaluate (host " in lines[0]
        assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in lines)  # each line timed
        assert any("  epoch 1/2: 1/3 batches" in line for line in lines)        # progress
        assert any(re.search(r"  epoch 2/2: loss [\d.]+", line) for line in lines)   # the epoch lines
        assert any("[eval] fgsm: acc" in line for line in lines)                  # the evaluation
        assert any("clean_acc" in line for line in lines)                         # the summary
        assert other not in log and "leaderboard" not in log and "done:" not in log  # nothing of the grid's
    # the console keeps its plain lines (no time stamps)
    assert re.search(r"^  epoch 1/2: loss", out, re.M)
    # a rerun skips the finished runs, and says so in their logs, after the first session
    assert run.main([str(cfg)]) == 0
    for run_id in ids:
        log = (tmp_path / "out" / "runs" / run_id / "run.log").read_text()
        assert log.count("=== ") == 2 and "finished already" in log.splitlines()[-1]
        assert log.count("[eval] fgsm") == 1
    # --force redoes a run from scratch but keeps the log of the earlier sessions
    assert run.main([str(cfg), "--force", "--only", "vanilla"]) == 0
    vanilla = next(i for i in ids if "-vanilla-" in i)
    log = (tmp_path / "out" / "runs" / vanilla / "run.log").read_text()
    assert log.count("=== ") == 3 and log.count("[eval] fgsm") == 2 and ": --force (" in log


def test_the_evaluators_progress_lines_follow_the_same_setting(monkeypatch):
    from robustbench_convnorm.attacks import _progress

    lines = []
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    with _progress.Progress(3, "pgd10", lines.append) as bar:
        bar.update()
    assert lines and lines[0].startswith("[eval] pgd10: 1 of 3 batches")
    monkeypatch.setenv(progress.INTERVAL_ENV, "3600")
    lines.clear()
    with _progress.Progress(3, "pgd10", lines.append) as bar:
        bar.update()
    assert not lines
