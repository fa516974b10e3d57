"""--eval-only never destroys a finished result: the new record is built in
memory and replaces record.json and per_example.csv only when complete; a
failure or Ctrl-C leaves them as they were and the console says so; a
checkpoint copied in from another configuration is refused, naming both."""
import json
import shutil

import pytest

from integrity_common import private_copy, run_dirs, write_config
from robustbench_convnorm import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """vanilla and ocnn (same weight layout), trained and evaluated once."""
    base = tmp_path_factory.mktemp("trained")
    cfg = write_config(base, "out", normalizers=[{"name": "vanilla"}, {"name": "ocnn"}], train__epochs=1)
    assert run.main([str(cfg)]) == 0
    return cfg, base / "out"


@pytest.fixture
def copy_of(trained, tmp_path):
    """A private copy of the trained output; ``args`` runs the CLI on it."""
    return private_copy(trained, tmp_path)


def _results(out):
    return {d.name: {f: (d / f).read_bytes() for f in ("record.json", "per_example.csv")} for d in run_dirs(out)}


def test_a_failing_evaluation_keeps_the_finished_record(copy_of, monkeypatch, capsys):
    cli, out = copy_of
    before = _results(out)

    def crash(*args, **kwargs):
        raise RuntimeError("the attack crashed")
    monkeypatch.setattr(run.execute, "evaluate_into", crash)
    assert cli("--eval-only") == 1
    assert _results(out) == before
    shown = capsys.readouterr().out
    assert "RuntimeError: the attack crashed" in shown and "its record (finished) is unchanged" in shown


def test_ctrl_c_during_evaluation_keeps_the_finished_record(copy_of, monkeypatch):
    cli, out = copy_of
    before = _results(out)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(run.execute, "evaluate_into", ctrl_c)
    assert cli("--eval-only") == 130
    assert _results(out) == before


def test_a_failed_record_write_puts_the_old_per_example_back(copy_of, monkeypatch, capsys):
    """per_example.csv is replaced before record.json: if the record cannot be
    written (disk full), the kept record must not sit beside new outcomes."""
    cli, out = copy_of
    before = _results(out)
    evaluate = run.execute.evaluate_into

    def other_outcomes(*args, **kwargs):  # a real evaluation whose outcomes differ from the kept ones
        frame = evaluate(*args, **kwargs)
        frame["clean_correct"] = 1 - frame["clean_correct"]
        return frame

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(run.execute, "evaluate_into", other_outcomes)
    monkeypatch.setattr(run.execute, "write_json_atomic", disk_full)
    assert cli("--eval-only") == 1
    assert _results(out) == before
    assert "No space left on device" in capsys.readouterr().out


def test_a_checkpoint_copied_from_another_configuration_is_refused(copy_of, capsys):
    cli, out = copy_of
    vanilla, ocnn = (next(d for d in run_dirs(out) if f"-{name}-" in d.name) for name in ("vanilla", "ocnn"))
    for name in ("checkpoint.pt", "checkpoint.pt.sha256"):
        if (ocnn / name).exists():
            shutil.copy(ocnn / name, vanilla / name)
    before = _results(out)
    assert cli("--eval-only", "--only", "vanilla") == 1
    shown = capsys.readouterr().out
    assert "normalizers.0.name: 'ocnn' in the checkpoint, 'vanilla' in this run" in shown
    assert _results(out) == before                                   # vanilla keeps vanilla's numbers
    # training refuses it too, rather than resuming another model's weights
    (vanilla / "record.json").unlink()
    assert cli("--only", "vanilla") == 1
    assert "'ocnn' in the checkpoint" in capsys.readouterr().out
    assert (vanilla / "checkpoint.pt").read_bytes() == (ocnn / "checkpoint.pt").read_bytes()  # untouched


def test_eval_only_on_an_untrained_run_says_why(tmp_path, capsys):
    cfg = write_config(tmp_path, "fresh")
    assert run.main([str(cfg), "--eval-only"]) == 1
    shown = capsys.readouterr().out
    assert "there is no good checkpoint" in shown and "train the run first" in shown


# ---------------------------------------------------------------- adding evaluators (issue 19, item 8)

FGSM = "eval.evaluators=[{type: clean}, {type: fgsm, eps: 8/255}]"


def _table(out, name):
    import pandas as pd

    (run_dir,) = [d for d in run_dirs(out) if f"-{name}-" in d.name]
    return json.loads((run_dir / "record.json").read_text()), pd.read_csv(run_dir / "per_example.csv")


def test_eval_only_with_a_new_list_adds_to_the_earlier_evaluations(copy_of, capsys):
    """The earlier PGD (pgd2) stays, outcomes and all, and the worst case covers PGD and the new
    FGSM per example (not a minimum of their accuracies)."""
    cli, out = copy_of
    before, before_table = _table(out, "vanilla")
    assert cli("--eval-only", "--only", "vanilla", "--set", FGSM) == 0
    assert "kept the earlier evaluation(s) pgd2" in capsys.readouterr().out
    after, table = _table(out, "vanilla")
    assert set(after["evaluations"]) == {"clean", "pgd2", "fgsm"} and after["kept_evaluations"] == ["pgd2"]
    assert after["evaluations"]["pgd2"]["acc"] == before["evaluations"]["pgd2"]["acc"]
    assert after["metrics"]["pgd2_acc"] == before["metrics"]["pgd2_acc"] and "fgsm_acc" in after["metrics"]
    pgd_cols = [c for c in before_table.columns if c.startswith("pgd2_")]
    assert table[pgd_cols].equals(before_table[pgd_cols])                       # outcomes kept as they were
    survived = table["clean_correct"] & table["pgd2_correct"] & table["fgsm_correct"]
    assert table["worst_case_correct"].astype(bool).tolist() == survived.tolist()
    assert after["metrics"]["worst_case_acc"] == pytest.approx(100 * survived.mean())
    assert after["metrics"]["worst_case_acc"] <= min(before["metrics"]["worst_case_acc"],
                                                     after["metrics"]["fgsm_acc"])
    # re-running the same list keeps them all again; --replace-evaluations drops the others
    assert cli("--eval-only", "--only", "vanilla", "--set", FGSM) == 0
    assert set(_table(out, "vanilla")[0]["evaluations"]) == {"clean", "pgd2", "fgsm"}
    assert cli("--eval-only", "--replace-evaluations", "--only", "vanilla", "--set", FGSM) == 0
    replaced, table = _table(out, "vanilla")
    assert set(replaced["evaluations"]) == {"clean", "fgsm"} and "pgd2_acc" not in replaced["metrics"]
    assert not [c for c in table.columns if c.startswith("pgd2_")]


def test_evaluations_of_other_examples_are_not_mixed_into_one_worst_case(copy_of, capsys):
    cli, out = copy_of
    before = _results(out)
    assert cli("--eval-only", "--only", "vanilla", "--set", FGSM, "--set", "eval.n_examples=20") == 1
    shown = capsys.readouterr().out
    assert "eval.n_examples=None" in shown and "--replace-evaluations" in shown
    assert _results(out) == before
