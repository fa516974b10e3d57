"""End to end: a run with the certified evaluator and PGD-L2 records certified
accuracy, per-example radii and the network bound, and the leaderboard shows
them with the accuracy-vs-L2-radius plot."""
import json

import pandas as pd
import pytest

from integrity_common import run_dirs, write_config
from robustbench_convnorm import run


@pytest.mark.slow
def test_a_run_records_certified_accuracy_radii_and_the_network_bound(tmp_path):
    cfg = write_config(tmp_path, "cert", normalizers=[{"name": "cayley"}], train__epochs=1,
                       speed={"channels_last": False},
                       eval={"batch_size": 48, "lipschitz": True, "evaluators": [
                           {"type": "clean"}, {"type": "certified", "eps": "1/255"},
                           {"type": "pgd", "eps": "36/255", "step": "9/255", "steps": 3, "norm": "L2"}]})
    assert run.main([str(cfg)]) == 0
    (rd,) = run_dirs(tmp_path / "cert")
    rec = json.loads((rd / "record.json").read_text())
    m = rec["metrics"]
    assert "certified_eps1_acc" in m and m["certified_eps1_acc"] <= m["clean_acc"]
    assert m["lip_network_log10"] is not None and rec["lipschitz"]["network"]["sound"]
    ev = rec["evaluations"]["certified_eps1"]
    assert ev["kind"] == "certified" and ev["bound_sound"] and ev["network_bound"] > 0
    assert rec["evaluations"]["pgd3_eps36_step9_normL2"]["norm"] == "L2"
    assert not any(f.endswith(":broken") for f in rec["flags"])
    table = pd.read_csv(rd / "per_example.csv")
    assert (table["certified_eps1_radius"] >= 0).all()
    assert (tmp_path / "cert" / "acc_vs_l2_radius.png").exists()
    assert "certified" in (tmp_path / "cert" / "leaderboard.md").read_text()
