"""Checkpoints are never loaded blindly: a flipped bit or a truncated file is
caught by its SHA-256, set aside and named, and training resumes from the
previous good checkpoint (or restarts) to exactly the uninterrupted result;
a process dying at any point inside a checkpoint write loses nothing; a
checkpoint from another configuration is refused."""
import pytest
import torch

from integrity_common import flip_bit_in, same_weights
from robustbench_convnorm import checkpoints
from robustbench_convnorm.checkpoints import CheckpointError, load_checkpoint, load_latest, load_model
from robustbench_convnorm.config import config_from_dict, expand_grid
from robustbench_convnorm.training.loop import CHECKPOINT, train_run


def _spec(out, **train):
    raw = {"data": {"source": "synthetic", "options": {"n_train": 48, "n_test": 16, "size": 8},
                    "augment": {"crop_padding": 1}},
           "model": {"arch": "convnet", "width": 0.25},
           "train": {"method": "free", "epochs": 3, "batch_size": 16, "replays": 2, "val_examples": 8,
                     "val_pgd_steps": 1, **train},
           "output_dir": str(out)}
    (spec,) = expand_grid(config_from_dict(raw))
    return spec


def _train(spec, **kw):
    from robustbench_convnorm.builders import build_run_model, model_meta
    from robustbench_convnorm.data import prepare_data

    torch.manual_seed(spec.seed)
    data = prepare_data(spec.config.data, spec.seed)
    meta = model_meta(data)
    model = build_run_model(spec.config, meta)
    kw.setdefault("log", lambda *a: None)
    return model, train_run(spec, model, data, meta, torch.device("cpu"), spec.run_dir, **kw)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 3-epoch run every interrupted one must end equal to."""
    model, result = _train(_spec(tmp_path_factory.mktemp("straight")))
    assert result.status == "finished"
    return model.state_dict()


def _stopped_after(tmp_path, epochs_done):
    spec = _spec(tmp_path, stop_after_epochs=epochs_done)
    _, result = _train(spec)
    assert result.status == "stopped" and result.checkpoint_epoch == epochs_done
    spec.config.train.stop_after_epochs = None
    return spec


def _resume(spec):
    lines = []
    model, result = _train(spec, log=lines.append)
    assert result.status == "finished"
    return model.state_dict(), result, "\n".join(lines)


def test_a_flipped_bit_is_set_aside_and_resume_equals_the_uninterrupted_run(tmp_path, straight):
    spec = _stopped_after(tmp_path, 2)
    ckpt_path = spec.run_dir / CHECKPOINT
    stem = next(k for k in straight if k.endswith("weight"))
    flip_bit_in(ckpt_path, load_checkpoint(ckpt_path)["model"][stem])
    weights, result, log = _resume(spec)
    assert same_weights(weights, straight)
    (aside,) = spec.run_dir.glob("checkpoint.pt.corrupt-*")
    assert "does not match the SHA-256" in log and f"set aside as {aside.name}" in log
    assert "resumed from the previous checkpoint checkpoint.prev.pt (epoch 1)" in log
    assert any(aside.name in note for note in result.notes)         # the record gets these notes


def test_a_truncated_checkpoint_is_named_not_a_bare_torch_error(tmp_path, straight):
    spec = _stopped_after(tmp_path, 2)
    ckpt_path = spec.run_dir / CHECKPOINT
    ckpt_path.write_bytes(ckpt_path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=f"{ckpt_path}.*does not match the SHA-256"):
        load_checkpoint(ckpt_path)
    weights, _, log = _resume(spec)
    assert same_weights(weights, straight) and "set aside as checkpoint.pt.corrupt-" in log


def test_no_good_checkpoint_left_restarts_from_epoch_0(tmp_path, straight):
    spec = _stopped_after(tmp_path, 1)                               # no previous checkpoint yet
    ckpt_path = spec.run_dir / CHECKPOINT
    flip_bit_in(ckpt_path, next(iter(load_checkpoint(ckpt_path)["model"].values())))
    weights, _, log = _resume(spec)
    assert same_weights(weights, straight)
    assert "no good checkpoint is left: training restarts from epoch 0" in log


def test_a_checkpoint_from_before_checksums_loads_with_a_note(tmp_path, straight):
    spec = _stopped_after(tmp_path, 2)
    checkpoints.checksum_path(spec.run_dir / CHECKPOINT).unlink()
    (spec.run_dir / "checkpoint.prev.pt").unlink()
    weights, _, log = _resume(spec)
    assert same_weights(weights, straight)
    assert "checkpoint.pt has no stored checksum" in log and "resuming from epoch 2/3" in log


class _Died(BaseException):
    """Stands for SIGKILL in this process (the slow suite kills for real)."""


@pytest.mark.parametrize("point", ["written", "listed", "rotated"])
def test_dying_inside_a_checkpoint_write_loses_nothing(tmp_path, straight, monkeypatch, point):
    spec = _spec(tmp_path)

    def die(at, state):
        if at == point and state["epoch"] == 2:
            raise _Died
    monkeypatch.setattr(checkpoints, "_fault", die)
    with pytest.raises(_Died):
        _train(spec)
    monkeypatch.undo()
    weights, _, log = _resume(spec)
    assert same_weights(weights, straight)
    assert not list(spec.run_dir.glob("*.corrupt-*")), log          # a crash never looks like damage
    assert "resuming from epoch 1/3" in log


def test_every_kept_checkpoint_is_listed_in_sha256sum_format(tmp_path):
    import hashlib

    spec = _stopped_after(tmp_path, 2)
    listing = checkpoints.checksum_path(spec.run_dir / CHECKPOINT).read_text().splitlines()
    for name in (CHECKPOINT, "checkpoint.prev.pt"):
        digest = hashlib.sha256((spec.run_dir / name).read_bytes()).hexdigest()
        assert f"{digest}  {name}" in listing                         # `sha256sum -c` checks them
    assert load_checkpoint(spec.run_dir / "checkpoint.prev.pt")["epoch"] == 1


def test_load_model_refuses_a_damaged_checkpoint(tmp_path):
    spec = _stopped_after(tmp_path, 1)
    ckpt_path = spec.run_dir / CHECKPOINT
    model, cfg = load_model(ckpt_path)
    assert cfg["train"]["epochs"] == 3 and not model.training
    flip_bit_in(ckpt_path, next(iter(load_checkpoint(ckpt_path)["model"].values())))
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        load_model(ckpt_path)
    ckpt, used, notes = load_latest(ckpt_path, log=lambda *a: None)
    assert ckpt is None and used is None and "restarts from epoch 0" in notes[-1]


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    spec = _stopped_after(tmp_path / "a", 1)
    other = _spec(tmp_path / "b", lr=0.01)
    other.run_dir.mkdir(parents=True)
    for name in (CHECKPOINT, "checkpoint.pt.sha256"):               # copied over, checksum and all
        if (spec.run_dir / name).exists():
            (other.run_dir / name).write_bytes((spec.run_dir / name).read_bytes())
    before = (other.run_dir / CHECKPOINT).read_bytes()
    with pytest.raises(checkpoints.CheckpointMismatch) as err:
        _train(other)
    assert "train.lr: 0.1 in the checkpoint, 0.01 in this run" in str(err.value)
    assert (other.run_dir / CHECKPOINT).read_bytes() == before       # nothing overwritten
    assert not (other.run_dir / "train_log.csv").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch run of the CLI (checkpoint.prev.pt holds epoch 1)."""
    from integrity_common import run_dirs, write_config
    from robustbench_convnorm import run

    base = tmp_path_factory.mktemp("finished")
    cfg = write_config(base, "out")
    assert run.main([str(cfg)]) == 0
    (run_dir,) = run_dirs(base / "out")
    return cfg, run_dir


@pytest.mark.parametrize("how", ["run", "--eval-only", "after an --eval-only set it aside"])
def test_a_finished_run_whose_final_checkpoint_is_damaged_resumes_and_is_re_evaluated(
        finished_run, tmp_path, capsys, how):
    """Not a dead end (issue 19, item 8): plain `run` no longer skips it as finished and
    --eval-only no longer asks for training; both resume from checkpoint.prev.pt, train the
    last epoch again (to the same weights: resume is exact) and re-evaluate."""
    import json
    import shutil

    from robustbench_convnorm import run

    cfg, original = finished_run
    run_dir = tmp_path / "out" / "runs" / original.name
    shutil.copytree(original, run_dir)
    good = load_checkpoint(run_dir / CHECKPOINT)
    before = json.loads((run_dir / "record.json").read_text())
    flip_bit_in(run_dir / CHECKPOINT, next(iter(good["model"].values())))
    if how.startswith("after"):   # what an --eval-only of the starting main left behind
        load_latest(run_dir / CHECKPOINT, log=lambda *a: None)
        assert not (run_dir / CHECKPOINT).exists()
    args = [str(cfg), "--set", f"output_dir={tmp_path / 'out'}"] + (["--eval-only"] if how == "--eval-only" else [])
    assert run.main(args) == 0
    shown = capsys.readouterr().out
    assert "resuming from the previous good checkpoint" in shown and "resuming from epoch 1/2" in shown
    after = json.loads((run_dir / "record.json").read_text())
    assert after["status"] == "finished" and after["metrics"] == before["metrics"]
    assert same_weights(load_checkpoint(run_dir / CHECKPOINT)["model"], good["model"])
    assert checkpoints.final_checkpoint_problem(run_dir / CHECKPOINT) is None
    assert run.main(args[:3]) == 0 and "finished already" in capsys.readouterr().out   # and now it stands
