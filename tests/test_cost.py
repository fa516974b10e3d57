"""Cost beside robustness: every record says what training and evaluation
cost (measured where the work happens), the leaderboard shows it, and the
Pareto front of accuracy against cost is the right set of models."""
import math

import pandas as pd
import pytest

import cli_util
from leaderboard_records import make_record, records, tiny_config, write
from robustbench_convnorm.leaderboard import build_leaderboard
from robustbench_convnorm.leaderboard.pareto import panel_points, pareto_front


def test_pareto_front_on_hand_made_points():
    pts = [(10.0, 50.0),   # 0: cheapest
           (20.0, 60.0),   # 1: on the front
           (20.0, 55.0),   # 2: dominated by 1 (same cost, less accurate)
           (30.0, 60.0),   # 3: dominated by 1 (more cost, same accuracy)
           (40.0, 70.0),   # 4: most accurate
           (15.0, 40.0),   # 5: dominated by 0
           (math.nan, 99.0), (5.0, math.nan)]
    assert pareto_front(pts) == [0, 1, 4]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]   # equal points dominate neither
    assert pareto_front([]) == []


def test_every_record_holds_plausible_costs_and_the_leaderboard_shows_them(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "out")
    done = cli_util.cli(cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    recs = records(tmp_path / "out")
    assert len(recs) == 2
    for rec in recs.values():
        cost = rec["cost"]
        assert cost["params"] == rec["params"] > 0
        # the peak holds at least the parameters' float32 bytes (it holds far more: torch itself)
        assert cost["peak_memory_mb"] * 2 ** 20 > 4 * cost["params"]
        assert cost["peak_memory_kind"] == "cpu_rss_high_water" and cost["peak_memory_scope"] in ("run", "process")
        # images per second agree with seconds per epoch: 64 images x 2 replays per epoch
        per_epoch = 64 * 2 / cost["train_images_per_second"]
        assert per_epoch == pytest.approx(cost["train_seconds_per_epoch"], rel=1e-6)
        assert cost["train_seconds"] == pytest.approx(2 * cost["train_seconds_per_epoch"], rel=1e-6)
        assert set(cost["eval_seconds"]) == set(rec["evaluations"]) and all(
            v >= 0 for v in cost["eval_seconds"].values())
    written = build_leaderboard(tmp_path / "out", formats=["md", "html"])
    df = pd.read_csv(written["csv"])
    for col in ("train_seconds_mean", "train_images_per_second_mean", "peak_memory_mb_mean", "eval_seconds_mean"):
        assert df[col].notna().all(), col
    md = written["md"].read_text()
    assert "train s" in md and "peak MiB" in md and "train img/s" in md
    assert written["plot_pareto"].exists() and written["plot_pareto_pdf"].exists()


def test_records_without_cost_build_without_cost_columns_or_pareto(tmp_path):
    write(tmp_path, make_record(normalizer="sn"))
    written = build_leaderboard(tmp_path, formats=[])
    assert "peak_memory_mb_mean" not in pd.read_csv(written["csv"]).columns
    assert "plot_pareto" not in written


def test_an_unreliable_model_is_drawn_but_never_on_the_front():
    """The cheapest and most robust point is a flagged evaluation: the front is
    what is left without it (it overstates robustness)."""
    rows = pd.DataFrame({"train_seconds_mean": [10.0, 20.0, 30.0], "acc_mean": [5.0, 40.0, 30.0],
                         "unreliable": [True, False, pd.NA]})
    pts, unreliable, front = panel_points(rows, "acc", "train_seconds")
    assert pts[0] == (10.0, 5.0) and unreliable == [True, False, False] and front == [1]
    rows.loc[0, "acc_mean"] = 90.0
    assert panel_points(rows, "acc", "train_seconds")[2] == [1]
    rows.loc[0, "unreliable"] = False
    assert panel_points(rows, "acc", "train_seconds")[2] == [0]
