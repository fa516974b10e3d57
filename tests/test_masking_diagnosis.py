"""robustbench-convnorm masking: the attacks of the diagnosis run on the very
test images the run evaluated (its clean accuracy is the record's), each
attack is at most as accurate as clean on them, and the table is written."""
import csv
import json

import pytest

from integrity_common import run_dirs, write_config
from robustbench_convnorm import cli, run
from robustbench_convnorm.masking import threat_eps


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("masking")
    cfg = write_config(base, "out", train__epochs=1, eval__n_examples=40)
    assert run.main([str(cfg)]) == 0
    return run_dirs(base / "out")[0]


def test_the_diagnosis_attacks_the_runs_own_evaluated_images(trained, tmp_path):
    out = tmp_path / "masking.csv"
    assert cli.main(["masking", str(trained), "--steps", "2", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1
    row = {k: (v if k == "run" else float(v)) for k, v in rows[0].items()}
    record = json.loads((trained / "record.json").read_text())
    assert row["n"] == 40 and row["eps"] == pytest.approx(8 / 255)
    assert row["clean"] == pytest.approx(record["metrics"]["clean_acc"])   # the same images, the same model
    attacks = ["pgd2_ce", "pgd10_ce_small_step", "apgd2_ce", "apgd2_dlr", "apgdt2_dlr"]
    assert all(0.0 <= row[a] <= row["clean"] + 1e-9 for a in attacks), row
    assert row["top2_margin_median"] >= 0


def test_the_threat_eps_is_the_one_the_evaluation_decided():
    """The eps of the L-inf white-box evaluations the protocol marked in the
    threat model: not a sanity point at a huge eps, not an L2 attack."""
    record = {"evaluations": {
        "pgd10_eps0p5": {"kind": "whitebox", "norm": "Linf", "eps": 0.5, "in_threat_model": False},
        "pgd_l2": {"kind": "whitebox", "norm": "L2", "eps": 0.5, "in_threat_model": True},
        "clean": {"kind": "clean"},
        "pgd20": {"kind": "whitebox", "norm": "Linf", "eps": 4 / 255, "in_threat_model": True}}}
    assert threat_eps(record) == pytest.approx(4 / 255)
    del record["evaluations"]["pgd20"]
    with pytest.raises(ValueError, match="no L-inf white-box evaluation in its threat model"):
        threat_eps(record)
