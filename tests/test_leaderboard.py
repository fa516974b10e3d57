"""Leaderboard tables and plots from hand-made records (schema: docs/ARCHITECTURE.md)."""
import math
import statistics
import subprocess
import sys

import pandas as pd
import pytest

from leaderboard_records import EPS, GRID, ROOT, make_record, write
from robustbench_convnorm.leaderboard import LeaderboardWarning, build_leaderboard, main

# the tables alone, for tests that look at no plot or page (the default build writes them all)
TABLES = {"formats": ["md"], "plots": False}


@pytest.fixture
def full_grid(tmp_path):
    res = tmp_path / "results"
    for norm, vals in GRID.items():
        for seed in range(3):
            write(res, make_record(normalizer=norm, seed=seed, **{k: v[seed] for k, v in vals.items()}))
    return res


def read_csv(path):
    return pd.read_csv(path, keep_default_na=True)


def test_means_and_stds_match_hand_computation(full_grid):
    written = build_leaderboard(full_grid, **TABLES)
    df = read_csv(written["csv"]).set_index("normalizer")
    for norm, vals in GRID.items():
        row = df.loc[norm]
        assert row["n_seeds"] == 3 and row["n_failed"] == 0 and row["status"] == "ok"
        for attack, xs in vals.items():
            col = f"{attack}_acc"
            assert row[f"{col}_mean"] == pytest.approx(sum(xs) / 3, abs=1e-12)
            assert row[f"{col}_std"] == pytest.approx(statistics.stdev(xs), abs=1e-12)  # ddof=1
        assert row["params_mean"] == 11_000_000 and row["params_std"] == 0
        assert row["train_seconds_per_epoch_mean"] == pytest.approx(20.0)
        assert row["lip_product_log10_mean"] == pytest.approx(3.5)
        assert row["mean_layer_spectral_norm_mean"] == pytest.approx(1.2)
        assert row["model"] == f"{norm}+BN" and row["seeds"] == "0,1,2"
    runs = read_csv(written["runs_csv"])
    assert len(runs) == 9
    for col in ("run_id", "status", "dataset", "arch", "normalizer", "batchnorm", "train_method", "train_eps",
                "seed", "clean_acc", "fgsm_acc", "pgd10_acc", "pgd20_acc", "worst_case_acc", "params",
                "train_seconds_per_epoch", "flags", "error_reason"):
        assert col in runs.columns, col
    assert set(runs["status"]) == {"finished"}


def test_one_seed_std_is_empty(tmp_path):
    res = tmp_path / "r"
    write(res, make_record(seeds=[0]))
    df = read_csv(build_leaderboard(res, **TABLES)["csv"])
    assert df.loc[0, "pgd20_acc_mean"] == 44.0
    assert math.isnan(df.loc[0, "pgd20_acc_std"])
    md = (res / "leaderboard.md").read_text()
    assert "| 44.00 |" in md and "44.00 ±" not in md


def test_ranking_by_strongest_whitebox_and_rank_by(full_grid):
    written = build_leaderboard(full_grid, **TABLES)
    df = read_csv(written["csv"])
    # pgd20 is the lowest white-box column; convnorm (44.87) > sn (44.5) > oni (41.1)
    assert list(df["normalizer"]) == ["convnorm", "sn", "oni"]
    assert list(df["rank"]) == [1, 2, 3]
    md = written["md"].read_text()
    assert "Ranked within each dataset by **PGD-20**" in md
    # rows in rank order in the model table, and the paper layout: attack rows x model columns
    assert md.index("| 1 | convnorm+BN") < md.index("| 2 | sn+BN") < md.index("| 3 | oni+BN")
    assert "| attack | convnorm+BN | sn+BN | oni+BN |" in md
    for attack in ("| clean |", "| FGSM |", "| PGD-10 |", "| PGD-20 |"):
        assert attack in md
    m, s = statistics.mean(GRID["convnorm"]["pgd20"]), statistics.stdev(GRID["convnorm"]["pgd20"])
    assert f"{m:.2f} ± {s:.2f}" in md

    # clean accuracy ranks convnorm, sn, oni too; rank by fgsm: convnorm 52.9 > sn 52.37 > oni
    df = read_csv(build_leaderboard(full_grid, rank_by="clean_acc", **TABLES)["csv"])
    assert list(df["normalizer"]) == ["convnorm", "sn", "oni"]
    # lower is better for the time per epoch: make oni fastest
    for seed in range(3):
        rec = make_record(normalizer="oni", seed=seed, sec_per_epoch=5.0,
                          **{k: v[seed] for k, v in GRID["oni"].items()})
        write(full_grid, rec)
    df = read_csv(build_leaderboard(full_grid, rank_by="train_seconds_per_epoch", **TABLES)["csv"])
    assert df.iloc[0]["normalizer"] == "oni"
    with pytest.raises(ValueError, match="no such metric"):
        build_leaderboard(full_grid, rank_by="nonsense")


def test_failed_missing_and_running_runs_are_reported(tmp_path):
    res = tmp_path / "r"
    write(res, make_record(normalizer="sn", seed=0, pgd20=40.0))
    write(res, make_record(normalizer="sn", seed=1, pgd20=42.0))
    write(res, make_record(normalizer="sn", seed=2, status="failed", error={"epoch": 3, "reason": "NaN loss"},
                           pgd20=0.0))
    write(res, make_record(normalizer="oni", seed=0, pgd20=41.0))  # seeds 1, 2: no record
    write(res, make_record(normalizer="ocnn", seed=0, status="running"))
    write(res, make_record(normalizer="ocnn", seed=1, status="failed", error={"epoch": 0, "reason": "OOM"}))
    written = build_leaderboard(res, **TABLES)
    df = read_csv(written["csv"]).set_index("normalizer")
    sn = df.loc["sn"]
    assert (sn["n_seeds"], sn["n_failed"], sn["n_expected"]) == (2, 1, 3)
    assert sn["pgd20_acc_mean"] == pytest.approx(41.0)  # the failed run is counted, not averaged
    assert sn["pgd20_acc_std"] == pytest.approx(statistics.stdev([40.0, 42.0]))
    assert sn["status"] == "2/3 finished, 1 failed (seed 2)"
    oni = df.loc["oni"]
    assert oni["n_seeds"] == 1 and oni["missing_seeds"] == "1,2"
    assert "missing seeds 1,2" in oni["status"]
    ocnn = df.loc["ocnn"]
    assert (ocnn["n_seeds"], ocnn["n_failed"], ocnn["n_running"]) == (0, 1, 1)
    assert math.isnan(ocnn["pgd20_acc_mean"]) and pd.isna(ocnn["rank"])
    md = written["md"].read_text()
    assert "## Missing, failed or partial" in md
    assert "seed 2 failed at epoch 3: NaN loss" in md
    assert "seeds 1,2 have no record" in md
    assert "seed 0 running (not finished)" in md
    runs = read_csv(written["runs_csv"]).set_index("run_id")
    assert runs.loc["cifar10-resnet18-sn-bn-free-s2", "error_reason"] == "NaN loss"
    assert runs.loc["cifar10-resnet18-sn-bn-free-s2", "status"] == "failed"


def test_expected_seeds_from_union_when_config_has_none(tmp_path):
    res = tmp_path / "r"
    for seed in (0, 1):
        rec = make_record(normalizer="sn", seed=seed)
        del rec["config"]["seeds"]
        write(res, rec)
    rec = make_record(normalizer="oni", seed=0)
    del rec["config"]["seeds"]
    write(res, rec)
    df = read_csv(build_leaderboard(res, **TABLES)["csv"]).set_index("normalizer")
    assert df.loc["sn", "status"] == "ok"
    assert df.loc["oni", "status"] == "1/2 finished, missing seeds 1"


def test_corrupt_record_is_skipped_with_warning(full_grid):
    bad = full_grid / "runs" / "half-written"
    bad.mkdir(parents=True)
    (bad / "record.json").write_text('{"run_id": "x", "status": "fini')
    notrec = full_grid / "runs" / "not-a-record"
    notrec.mkdir()
    (notrec / "record.json").write_text("[1, 2]")
    with pytest.warns(LeaderboardWarning) as caught:
        written = build_leaderboard(full_grid, **TABLES)
    messages = " ".join(str(w.message) for w in caught)
    assert "half-written" in messages and "not-a-record" in messages
    assert len(read_csv(written["runs_csv"])) == 9
    md = written["md"].read_text()
    assert "skipped unreadable record" in md and "half-written" in md and "not-a-record" in md


def test_flags_union_and_data_note(tmp_path):
    res = tmp_path / "r"
    note = "CIFAR-10 from a JPEG copy, not the official data"
    write(res, make_record(seed=0, flags=["pgd_above_fgsm"], data_note=note))
    write(res, make_record(seed=1, flags=["pgd_above_fgsm", "buffer_changed"], data_note=note))
    written = build_leaderboard(res, **TABLES)
    df = read_csv(written["csv"])
    assert df.loc[0, "flags"] == "buffer_changed;pgd_above_fgsm"
    runs = read_csv(written["runs_csv"])
    assert "pgd_above_fgsm;buffer_changed" in set(runs["flags"])
    md = written["md"].read_text()
    assert note in md and "buffer_changed" in md


def test_plots_written_only_with_data(full_grid, tmp_path):
    # only failed runs: no data, no plot
    res = tmp_path / "failed"
    write(res, make_record(status="failed", error={"epoch": 1, "reason": "NaN loss"}))
    written = build_leaderboard(res)
    assert not [k for k in written if k.startswith("plot_")] and not list(res.glob("*.png"))
    # Table 1 grid: robust vs clean, and pgd10 + pgd20 at one eps make a steps sweep; no eps sweep, no SimBA
    written = build_leaderboard(full_grid)
    assert written["plot_robust_vs_clean"].stat().st_size > 0
    assert written["plot_acc_vs_steps"].stat().st_size > 0
    for key in ("plot_acc_vs_eps", "plot_simba_curve"):
        assert key not in written
    assert not (full_grid / "acc_vs_eps.png").exists()
    assert not (full_grid / "simba_success_vs_queries.png").exists()
    # a plot left by an earlier build is removed when the data no longer supports it
    for seed in range(3):
        rec = make_record(normalizer="sn", seed=seed)
        for k in ("pgd10_acc",):
            rec["metrics"].pop(k)
        rec["evaluations"].pop("pgd10")
        write(full_grid, rec)
    for norm in ("convnorm", "oni"):
        for seed in range(3):
            (full_grid / "runs" / make_record(normalizer=norm, seed=seed)["run_id"] / "record.json").unlink()
    written = build_leaderboard(full_grid)
    assert "plot_acc_vs_steps" not in written and not (full_grid / "acc_vs_steps.png").exists()
    # eps sweep, steps sweep and SimBA curves
    res = tmp_path / "sweep"
    for norm in ("sn", "convnorm"):
        for seed in (0, 1):
            extra = {f"pgd20_eps{k}": {"kind": "whitebox", "eps": k / 255, "steps": 20, "acc": 80 - 5 * k - seed}
                     for k in (2, 4, 16)}
            write(res, make_record(normalizer=norm, seed=seed, seeds=[0, 1], simba=(55.0 + seed, 2800.0),
                                   extra_evals=extra))
    written = build_leaderboard(res, out_dir=tmp_path / "out")
    for key in ("plot_robust_vs_clean", "plot_acc_vs_eps", "plot_acc_vs_steps", "plot_simba_curve"):
        assert written[key].parent == tmp_path / "out" and written[key].stat().st_size > 0
    df = read_csv(written["csv"])
    # the eps sweep does not hijack the ranking: the 16/255 column is lower but not at the common eps
    assert "Ranked within each dataset by **PGD-20**" in written["md"].read_text()
    assert df.loc[0, "simba_success_rate_mean"] == pytest.approx(55.5)


def test_no_whitebox_ranks_by_simba(tmp_path):
    res = tmp_path / "r"
    for norm, rate in (("sn", 60.6), ("convnorm", 53.5), ("oni", 55.9)):
        rec = make_record(normalizer=norm, batchnorm=False, train_method="natural", train_eps=None, seeds=[0],
                          simba=(rate, 2500.0))
        for k in ("fgsm_acc", "pgd10_acc", "pgd20_acc", "worst_case_acc"):
            rec["metrics"].pop(k)
        for k in ("fgsm", "pgd10", "pgd20"):
            rec["evaluations"].pop(k)
        write(res, rec)
    written = build_leaderboard(res)
    df = read_csv(written["csv"])
    assert list(df["normalizer"]) == ["convnorm", "oni", "sn"]  # lower success rate first
    assert list(df["model"]) == ["convnorm", "oni", "sn"]
    assert "plot_simba_curve" in written and "plot_robust_vs_clean" not in written
    assert "train eps –" in written["md"].read_text()


def test_empty_results_dir_and_missing_dir(tmp_path):
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    written = build_leaderboard(tmp_path / "empty", **TABLES)
    assert "No run records found." in written["md"].read_text()
    assert read_csv(written["csv"]).empty
    with pytest.raises(FileNotFoundError):
        build_leaderboard(tmp_path / "nope")


def test_cli_main_and_subprocess(full_grid, tmp_path, capsys):
    assert main([str(full_grid), "--rank-by", "fgsm", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "leaderboard.md").exists()
    assert "Ranked within each dataset by **FGSM**" in (tmp_path / "o" / "leaderboard.md").read_text()
    assert main([str(tmp_path / "nope")]) == 2
    assert main([str(full_grid), "--rank-by", "bogus"]) == 2
    assert "no such metric" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "robustbench_convnorm.leaderboard", str(full_grid)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(full_grid / "leaderboard.csv") in proc.stdout


def test_odd_but_readable_records_do_not_crash(tmp_path):
    res = tmp_path / "r"
    write(res, {"run_id": "a", "status": "failed", "error": "boom", "metrics": None, "evaluations": [],
                "flags": "f1", "timings": None}, name="a")
    write(res, make_record(normalizer="sn", seed=None, seeds=[3, 4], train_eps="8/255", params="12"), name="b")
    rec = make_record(normalizer="sn", seed=3, seeds=[3, 4], train_eps=round(EPS, 13))
    rec["timings"] = {"train_seconds": 10, "epochs_done": 4}  # per-epoch time derived
    write(res, rec, name="c")
    written = build_leaderboard(res, **TABLES)
    df = read_csv(written["csv"])
    sn = df[df["normalizer"] == "sn"].iloc[0]
    assert sn["n_seeds"] == 2 and "missing seeds 4" in sn["status"]  # both eps spellings group together
    assert sn["train_seconds_per_epoch_mean"] == pytest.approx((20.0 + 2.5) / 2)
    runs = read_csv(written["runs_csv"]).set_index("record")
    assert runs.loc["runs/c/record.json", "train_seconds_per_epoch"] == pytest.approx(2.5)
    assert pd.isna(runs.loc["runs/b/record.json", "seed"]) and runs.loc["runs/b/record.json", "params"] == 12
    assert "seed ? failed: boom" in written["md"].read_text()


def test_variants_are_separate_models_and_bn_label(tmp_path):
    res = tmp_path / "r"
    for seed in (0, 1):
        # one normalizer listed twice with different options, and an extra grid axis
        write(res, make_record(normalizer="convnorm", seed=seed, pgd20=40.0 + seed,
                               normalizer_options={"kernel": 3}), name=f"k3-{seed}")
        write(res, make_record(normalizer="convnorm", seed=seed, pgd20=30.0 + seed,
                               normalizer_options={"kernel": 5}), name=f"k5-{seed}")
        write(res, make_record(normalizer="sn", seed=seed, pgd20=20.0, grid_axes={"train.lr": 0.1,
                                                                                  "train.eps": EPS}),
              name=f"sn-lr0.1-{seed}")
        write(res, make_record(normalizer="sn", seed=seed, pgd20=10.0, grid_axes={"train.lr": 0.01,
                                                                                  "train.eps": EPS}),
              name=f"sn-lr0.01-{seed}")
        write(res, make_record(normalizer="bn", seed=seed, pgd20=5.0, normalizer_options={}), name=f"bn-{seed}")
    written = build_leaderboard(res, **TABLES)
    df = read_csv(written["csv"])
    assert list(df["model"]) == ["convnorm+BN [kernel=3]", "convnorm+BN [kernel=5]", "sn+BN [lr=0.1]",
                                 "sn+BN [lr=0.01]", "bn"]
    assert list(df["n_seeds"]) == [2] * 5 and set(df["status"]) == {"ok"}
    assert list(df["pgd20_acc_mean"]) == [40.5, 30.5, 20.0, 10.0, 5.0]
    assert df["variant"].fillna("").tolist()[-1] == ""
    runs = read_csv(written["runs_csv"])
    assert len(runs) == 10 and "variant" in runs.columns


def test_rerun_of_a_seed_counts_once(tmp_path):
    res = tmp_path / "r"
    write(res, make_record(seed=0, status="failed", error={"epoch": 2, "reason": "NaN loss"},
                           created="2026-01-01T00:00:00"), name="old")
    write(res, make_record(seed=0, pgd20=42.0, created="2026-01-02T00:00:00"), name="new")
    write(res, make_record(seed=1, pgd20=40.0, created="2026-01-01T00:00:00"), name="s1a")
    write(res, make_record(seed=1, pgd20=44.0, created="2026-01-03T00:00:00"), name="s1b")
    written = build_leaderboard(res, **TABLES)
    row = read_csv(written["csv"]).iloc[0]
    assert (row["n_seeds"], row["n_failed"]) == (2, 0)
    assert row["pgd20_acc_mean"] == pytest.approx(43.0)  # the newest finished record of each seed
    assert "several records for seed(s) 0,1" in written["md"].read_text()
    assert len(read_csv(written["runs_csv"])) == 4


def test_tied_attacks_rank_by_the_later_one_and_md_shows_headline_metrics(tmp_path):
    res = tmp_path / "r"
    for norm in ("sn", "oni"):
        rec = make_record(normalizer=norm, fgsm=13.0, pgd10=13.0, pgd20=13.0)
        rec["metrics"]["simba_mean_l2"] = 0.82
        write(res, rec)
    written = build_leaderboard(res, **TABLES)
    md = written["md"].read_text()
    assert "Ranked within each dataset by **PGD-20**" in md
    assert "simba mean l2" not in md
    assert read_csv(written["csv"])["simba_mean_l2_mean"].tolist() == [0.82, 0.82]
    assert read_csv(written["runs_csv"])["simba_mean_l2"].tolist() == [0.82, 0.82]


def test_grid_seeds_reveal_a_seed_missing_for_every_model(tmp_path):
    res = tmp_path / "r"
    for norm in ("sn", "oni"):
        for seed in (0, 1):                       # seed 2 of the grid never ran for anyone
            write(res, make_record(normalizer=norm, seed=seed, grid_seeds=[0, 1, 2]))
    df = read_csv(build_leaderboard(res, **TABLES)["csv"]).set_index("normalizer")
    for norm in ("sn", "oni"):
        assert df.loc[norm, "status"] == "2/3 finished, missing seeds 2"
