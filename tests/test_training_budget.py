"""Training budgets (train.budget): the epochs a budget buys are fixed once
before training, trained exactly, kept on resume, replayable with a fixed
epoch count, and a budget below one epoch is refused before any training."""
import pytest
import torch

from robustbench_convnorm.config import ConfigError, config_from_dict, expand_grid
from robustbench_convnorm.training import loop
from robustbench_convnorm.training.budget import BudgetError, parse_budget, plan_epochs
from test_training import _spec, _train

#: _spec's synthetic set: 48 examples in batches of 16, free AT with 2 replays
STEPS_PER_EPOCH = 3 * 2


def test_budgets_read_as_time_or_steps_and_bad_ones_name_the_fix():
    assert parse_budget("30m").amount == 1800 and parse_budget("2h").kind == "time"
    assert parse_budget("1h30m").amount == 5400 and parse_budget("90s").amount == 90
    assert (parse_budget("5000 steps").kind, parse_budget("5000 steps").amount) == ("steps", 5000)
    for bad in ("abc", "30", "0m", 30, "5 epochs"):
        with pytest.raises(BudgetError, match="budget"):
            parse_budget(bad)
    with pytest.raises(BudgetError, match="one epoch takes 6 optimizer steps; give at least '6 steps'"):
        plan_epochs(parse_budget("5 steps"), 6, lambda: 1.0)
    steps = plan_epochs(parse_budget("20 steps"), 6, lambda: pytest.fail("a step budget measures nothing"))
    assert steps.epochs == 3 and steps.load_average is None
    with pytest.raises(BudgetError, match=r"estimated at 40.0 s"):
        plan_epochs(parse_budget("30s"), 6, lambda: 40.0)
    assert plan_epochs(parse_budget("2m"), 6, lambda: 40.0).epochs == 3


def test_config_refuses_an_unreadable_budget_and_milestones_it_would_move():
    with pytest.raises(ConfigError, match=r"train\.budget.*'30 minutes' is not a budget"):
        config_from_dict({"train": {"budget": "30 minutes"}})
    with pytest.raises(ConfigError, match=r"train\.schedule.*budget decides the epochs"):
        config_from_dict({"train": {"budget": "1h", "schedule": "multistep", "milestones": [5]}})


def test_the_run_id_hashes_the_budget_not_the_unused_epochs(tmp_path):
    one = _spec(tmp_path, budget="1h", epochs=3)[0]
    assert _spec(tmp_path, budget="1h", epochs=7)[0].run_id == one.run_id
    assert _spec(tmp_path, budget="2h", epochs=3)[0].run_id != one.run_id
    assert _spec(tmp_path, epochs=3)[0].run_id != one.run_id


def test_a_step_budget_trains_the_epochs_it_bought_and_no_more(tmp_path):
    spec = _spec(tmp_path, budget=f"{2 * STEPS_PER_EPOCH + 5} steps", epochs=9, schedule="cosine")[0]
    model, result = _train(spec, tmp_path)
    assert result.status == "finished" and result.epochs_done == 2 and len(result.log) == 2
    assert result.plan.epochs == 2 and result.plan.steps_per_epoch == STEPS_PER_EPOCH
    # the schedule knew the length: cosine reaches zero after exactly the planned steps
    assert result.log[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_a_budget_below_one_epoch_is_refused_before_training(tmp_path):
    spec = _spec(tmp_path, budget=f"{STEPS_PER_EPOCH - 1} steps")[0]
    with pytest.raises(BudgetError, match="buys no whole epoch"):
        _train(spec, tmp_path)
    assert not (spec.run_dir / loop.TRAIN_LOG).exists() and not (spec.run_dir / loop.CHECKPOINT).exists()


def _measured_as(seconds, calls):
    """The real warm-up (so that its side effects, if any, reach the run), with
    its estimate replaced by a fixed number so the test knows the epochs."""
    real = loop.measure_epoch_seconds

    def measure(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return seconds
    return measure


def test_a_time_budget_equals_its_replay_with_the_fixed_epochs_and_survives_a_resume(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "measure_epoch_seconds", _measured_as(10.0, calls))
    spec = _spec(tmp_path / "a", budget="35s", schedule="cosine", val_pgd_steps=1)[0]
    model_a, res_a = _train(spec, tmp_path)
    assert res_a.plan.epochs == 3 and res_a.plan.kind == "time" and len(calls) == 1 and calls[0] > 0
    assert res_a.plan.load_average >= 0   # the warm-up says how busy the machine was (Linux has getloadavg)
    assert res_a.plan.replay_sets() == "--set train.budget=null --set train.epochs=3"
    # the replay: no budget, the fixed epochs, the same weights bit for bit
    model_r, res_r = _train(_spec(tmp_path / "r", epochs=3, schedule="cosine", val_pgd_steps=1)[0], tmp_path)
    for (k, a), r in zip(model_a.state_dict().items(), model_r.state_dict().values()):
        assert torch.equal(a, r), k
    untimed = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in rows]
    assert untimed(res_a.log) == untimed(res_r.log)   # validation's random starts too: every RNG was put back
    # stopped after one epoch, resumed under another estimate: the checkpoint's plan is kept
    spec_b = _spec(tmp_path / "b", budget="35s", schedule="cosine", val_pgd_steps=1, stop_after_epochs=1)[0]
    assert _train(spec_b, tmp_path)[1].status == "stopped"
    monkeypatch.setattr(loop, "measure_epoch_seconds", lambda *a, **k: pytest.fail("a resume re-measured"))
    spec_b.config.train.stop_after_epochs = None
    model_b, res_b = _train(spec_b, tmp_path)
    assert res_b.status == "finished" and res_b.plan.epochs == 3
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), k


def test_the_dry_run_shows_the_budget_not_the_epochs_it_will_not_train(tmp_path):
    from robustbench_convnorm.run.grid import print_grid

    lines = []
    print_grid([_spec(tmp_path, budget="4m", epochs=10)[0], _spec(tmp_path / "b", epochs=3)[0]], lines.append)
    assert "budget=4m" in lines[1] and "epochs=" not in lines[1]
    assert "epochs=3" in lines[2] and "budget" not in lines[2]
