"""A record.json that is valid JSON but not this run's record (another
schema, fields of the wrong type, another run's run_id) never counts as the
run's outcome: it is named in a warning, the run is redone (here: resumed from
its finished checkpoint and re-evaluated), and the closing summary never
crashes on it (issue 19, item 7)."""
import json

import pytest

from integrity_common import private_copy, run_dirs, write_config
from robustbench_convnorm import run
from robustbench_convnorm.records import inspect_record, record_problem


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("trained")
    cfg = write_config(base, "out", train__epochs=1)
    assert run.main([str(cfg)]) == 0
    return cfg, base / "out"


@pytest.fixture
def copy_of(trained, tmp_path):
    cli, mine = private_copy(trained, tmp_path)
    (run_dir,) = run_dirs(mine)
    return cli, run_dir


def _edit(run_dir, change):
    rec = json.loads((run_dir / "record.json").read_text())
    edited = change(rec)
    (run_dir / "record.json").write_text(json.dumps(rec if edited is None else edited))
    return rec


@pytest.mark.parametrize("what, change", [
    ("schema", lambda r: r.update(schema=2, metrics={"clean_acc": 99.9})),
    ("run_id", lambda r: r.update(run_id="synthetic-convnet-vanilla-free-s0-00000000",
                                  metrics={"clean_acc": 99.9})),
    ("no run_id", lambda r: r.pop("run_id") and r.update(metrics={"clean_acc": 99.9})),
    ("not an object", lambda r: [{"status": "finished", "metrics": {"clean_acc": 99.9}}]),
])
def test_a_record_that_is_not_this_runs_is_redone_and_never_published(copy_of, capsys, what, change):
    cli, run_dir = copy_of
    good = json.loads((run_dir / "record.json").read_text())
    _edit(run_dir, change)
    assert inspect_record(run_dir)[0] is None                       # not a record of this run
    assert cli() == 0                                                # no crash in the summary
    shown = capsys.readouterr().out
    assert "is not this run's record" in shown and "finished already" not in shown
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["run_id"] == run_dir.name and rec["schema"] == 1 and rec["status"] == "finished"
    assert rec["metrics"]["clean_acc"] == good["metrics"]["clean_acc"] != 99.9   # re-evaluated, not the edit
    assert "done: 1 finished, 0 not" in shown


def test_the_summary_survives_outcomes_without_a_run_id_or_reason(capsys):
    from robustbench_convnorm.run.cli import summarize

    lines = []
    assert summarize([{"status": "failed", "error": "a string"}, {"run_id": "a", "status": "finished"}],
                     out=lines.append) == 1
    assert lines[0].startswith("done: 1 finished, 1 not")


def test_record_problem_names_what_is_wrong():
    good = {"schema": 1, "run_id": "r", "status": "finished", "metrics": {}, "evaluations": {}, "error": None}
    assert record_problem(good, "r") is None
    assert "schema 3" in record_problem(dict(good, schema=3))
    assert "not this folder's 'x'" in record_problem(good, "x")
    assert "status 'done'" in record_problem(dict(good, status="done"))
    assert "metrics is a list" in record_problem(dict(good, metrics=[]))
