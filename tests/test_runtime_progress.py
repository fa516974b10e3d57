"""Issue 20, item 6: long work is not silent. Lines from inside SimBA's and
AutoAttack's batches (images and queries done, time left), the grid's time
left from the epochs trained before any run has finished, and the time of
day on the console's lines."""
import logging
import re

import torch
from torch import nn

from robustbench_convnorm import logs, progress
from robustbench_convnorm.attacks import _progress
from robustbench_convnorm.attacks.protocol import evaluate
from robustbench_convnorm.progress import GridProgress


def _model(classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, classes)).eval()


def _data(n=12, classes=4):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8), torch.arange(n) % classes


def _eval_lines(monkeypatch, evaluator):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")   # a line whenever one may come
    model = _model()
    x, y = _data()
    with torch.no_grad():  # label each image with the model's own answer: every image can be attacked
        y = model(x.float() / 255).argmax(1)
    lines = []
    cfg = {"checks": False, "batch_size": 64, "evaluators": [{"type": "clean"}, evaluator]}
    evaluate(model, x, y, cfg, device="cpu", log=lines.append)
    return lines


def test_simba_says_images_and_queries_done_and_the_time_left_from_inside_its_batch(monkeypatch):
    lines = _eval_lines(monkeypatch, {"type": "simba", "n_images": 6, "max_iters": 40, "step": 0.05, "name": "simba"})
    inside = [l for l in lines if l.startswith("[eval] simba: batch 1 of 1: ")]
    assert inside, lines
    pattern = re.compile(r"^\[eval\] simba: batch 1 of 1: (\d+) of 6 images done, ([\d,]+) queries, about \S+ left$")
    counts = [(int(m[1]), int(m[2].replace(",", ""))) for m in map(pattern.match, inside)]
    assert all(counts), inside
    assert counts[-1][1] > counts[0][1] and counts == sorted(counts)   # queries only grow
    assert all(0 <= images <= 6 for images, _ in counts)


def test_autoattack_counts_its_forward_passes_inside_a_batch(monkeypatch):
    lines = _eval_lines(monkeypatch, {"type": "autoattack", "eps": 8 / 255, "version": "fast"})
    inside = [l for l in lines if l.startswith("[eval] autoattack_fast: batch 1 of 1: ")]
    assert inside and all(re.search(r": [\d,]+ of at most about [\d,]+ forward passes, about \S+ left$", l)
                          for l in inside), lines[:5]


def test_ticks_outside_an_evaluation_and_after_it_do_nothing():
    model = _model()
    calls = []
    _progress.tick(lambda: calls.append(1) or (0.5, "x"))
    with _progress.counting_forwards(model, 10):
        model(torch.zeros(1, 3, 4, 4))
    assert not calls and not model._forward_hooks
    with _progress.Progress(2, "e", calls.append, interval=0) as bar:
        with _progress.counting_forwards(model, 10):
            model(torch.zeros(1, 3, 4, 4))
        bar.update()
    assert len(calls) == 2 and calls[1].startswith("[eval] e: 1 of 2 batches") and \
        re.match(r"^\[eval\] e: batch 1 of 2: 1 of at most about 10 forward passes, about \S+ left$", calls[0])
    assert not model._forward_hooks      # the hook is gone with the block
    _progress.tick(lambda: calls.append("late") or (0.5, "x"))
    assert "late" not in calls


def test_the_grid_estimates_its_time_left_from_epochs_before_any_run_finished():
    now = [0.0]
    grid = GridProgress(3, clock=lambda: now[0], epochs=[2, 2, 2])
    assert grid.line(1, "a") == "[1/3] a  elapsed 0s  eta ?"
    now[0] += 10
    progress.epoch_done(10)                        # the loop's report reaches the grid under way
    assert progress.grid_eta_suffix() == "  grid eta 50s+"   # 5 epochs left at 10 s; evaluation not timed yet
    progress.epoch_done(10)
    now[0] += 15
    grid.ran(25)                                   # 5 s outside its epochs (its evaluation)
    assert grid.line(2, "b") == "[2/3] b  elapsed 25s  eta 50s"   # 4 epochs x 10 s + 2 runs x 5 s
    progress.epoch_done(20)                        # slower epochs: mean 13.3 s, 3 epochs and 2 evaluations left
    assert progress.grid_eta_suffix() == "  grid eta 50s"
    del grid
    assert progress.grid_eta_suffix() == ""        # no grid under way: the epoch line is unchanged


def test_console_lines_carry_the_time_of_day_unless_turned_off(monkeypatch, capsys):
    log = logs.get_logger("test")
    monkeypatch.setenv(logs.TIMESTAMPS_ENV, "1")
    with logs.console():
        log.info("[1/2] run-a  elapsed 0s  eta ?")
        log.info("\ninterrupted in epoch 2")
    out = capsys.readouterr().out
    assert re.match(r"^\d\d:\d\d:\d\d \[1/2\] run-a  elapsed 0s  eta \?\n\n\d\d:\d\d:\d\d interrupted in epoch 2\n$",
                    out), out
    monkeypatch.setenv(logs.TIMESTAMPS_ENV, "0")
    with logs.console():
        log.info("plain")
    assert capsys.readouterr().out == "plain\n"
    assert logging.getLogger(logs.LOGGER).handlers == []


def test_a_runs_epoch_lines_end_with_the_grids_time_left(tmp_path, capsys, monkeypatch):
    import yaml

    from robustbench_convnorm import run
    from robustbench_convnorm.leaderboard import build

    monkeypatch.setattr(build, "write_plots", lambda lb, out: {})
    raw = {"data": {"source": "synthetic", "options": {"n_train": 64, "n_test": 16, "size": 8, "num_classes": 4}},
           "model": {"arch": "convnet", "width": 0.25}, "normalizers": [{"name": "vanilla"}],
           "train": {"method": "natural", "epochs": 2, "batch_size": 32, "val_examples": 0},
           "eval": {"batch_size": 16, "lipschitz": False, "checks": False, "evaluators": [{"type": "clean"}]},
           "device": "cpu", "threads": 1, "speed": {"channels_last": "off"}, "output_dir": str(tmp_path / "out")}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert run.main([str(cfg)]) == 0
    out = capsys.readouterr().out
    # before the run has finished the estimate covers training only ("+"): 1 epoch left after the first
    assert re.search(r"^  epoch 1/2: loss .*  grid eta \d+s\+$", out, re.M), out
    assert re.search(r"^  epoch 2/2: loss .*  grid eta 0s\+$", out, re.M), out
