"""A leaderboard row is one trained configuration (issue 12, item 1).

Reproduces the report with real runs of the run command: a model trained for
2 epochs, then `--only vanilla --set train.epochs=1` into the same output_dir.
Both records carry the same (dataset, arch, normalizer, bn, method, eps); only
their resolved configs tell them apart."""
import copy
import shutil

import pandas as pd
import pytest

from leaderboard_records import TINY, make_record, records, tiny_config, write
from robustbench_convnorm import identity, run
from robustbench_convnorm.leaderboard import build_leaderboard
from robustbench_convnorm.leaderboard.groups import variants
from robustbench_convnorm.leaderboard.board import assemble


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    base = tmp_path_factory.mktemp("retrain")
    out = base / "results"
    cfg = tiny_config(base, out, eval=dict(TINY["eval"], lipschitz=False))
    assert run.main([str(cfg)]) == 0                                                # vanilla and sn, 2 epochs
    assert run.main([str(cfg), "--only", "vanilla", "--set", "train.epochs=1"]) == 0  # vanilla again, 1 epoch
    return out


def by_normalizer(out, name):
    return [r for r in records(out).values() if r["normalizer"] == name]


def test_retrained_model_is_a_row_of_its_own(retrained, tmp_path):
    vanilla = {r["config"]["train"]["epochs"]: r for r in by_normalizer(retrained, "vanilla")}
    assert set(vanilla) == {1, 2} and len({r["run_id"] for r in vanilla.values()}) == 2
    written = build_leaderboard(retrained, tmp_path / "lb", formats=["md"], plots=False)
    df = pd.read_csv(written["csv"])
    rows = df[df["normalizer"] == "vanilla"].set_index("variant")
    assert sorted(rows.index) == ["epochs=1", "epochs=2"]
    for epochs, rec in vanilla.items():
        row = rows.loc[f"epochs={epochs}"]
        assert (row["n_seeds"], row["n_records"], row["status"]) == (1, 1, "ok")
        for m in ("clean_acc", "pgd4_acc", "worst_case_acc"):  # each row holds its own run, nothing averaged
            assert row[f"{m}_mean"] == pytest.approx(rec["metrics"][m])
    assert rows["model_id"].nunique() == 2
    sn = df[df["normalizer"] == "sn"]
    assert len(sn) == 1 and sn["variant"].isna().all()  # a variant only where two models need telling apart
    md = written["md"].read_text()
    assert "vanilla [epochs=1]" in md and "vanilla [epochs=2]" in md
    assert "several records" not in md and "records for seed" not in md


def test_run_id_and_model_row_hash_the_same_identity(retrained):
    recs = list(records(retrained).values())
    for rec in recs:
        assert rec["run_id"].endswith("-" + identity.digest(identity.run_identity(rec["config"])))
    lb = assemble(retrained)
    for g in lb.groups:  # the row key is the run identity without the seed
        (run_,) = g.runs
        assert g.key[6] == identity.digest(identity.flatten(identity.model_identity(run_.raw["config"])))


def test_two_records_of_one_run_id_newest_finished_counts_and_the_table_says_so(retrained, tmp_path):
    res = tmp_path / "merged"
    shutil.copytree(retrained, res)
    (sn,) = by_normalizer(retrained, "sn")
    # the same run evaluated again elsewhere (results merged from two machines): eval
    # settings, device and output_dir are not part of the model, so it is the same row
    newer = copy.deepcopy(sn)
    newer["created"] = "2999-01-01T00:00:00+00:00"
    newer["metrics"]["pgd4_acc"] = 12.5
    newer["config"]["eval"]["evaluators"][-1]["steps"] = 40
    newer["config"].update(device="cuda", output_dir="/elsewhere", speed={"compile": True})
    write(res, newer, name=sn["run_id"] + "-elsewhere")
    failed = copy.deepcopy(sn)
    failed.update(status="failed", created="3000-01-01T00:00:00+00:00", error={"epoch": 1, "reason": "NaN loss"})
    write(res, failed, name=sn["run_id"] + "-failed-rerun")
    written = build_leaderboard(res, tmp_path / "lb", formats=["md"], plots=False)
    df = pd.read_csv(written["csv"])
    row = df[df["normalizer"] == "sn"]
    assert len(row) == 1
    row = row.iloc[0]
    assert row["pgd4_acc_mean"] == 12.5 and row["n_seeds"] == 1 and row["n_records"] == 3
    assert row["status"] == "ok; 3 records for seed 0 (the newest finished counts)"
    md = written["md"].read_text()
    assert "ok; 3 records for seed 0 (the newest finished counts)" in md.split("### ")[0]  # in the ranked table
    runs = pd.read_csv(written["runs_csv"]).set_index("record")
    assert runs.loc[f"runs/{sn['run_id']}-elsewhere/record.json", "counts"]
    assert not runs.loc[f"runs/{sn['run_id']}/record.json", "counts"]


def _resolved(norm="sn", **train):
    """A hand-made record whose config is a resolved one (as the run command writes)."""
    rec = make_record(normalizer=norm, batchnorm=False)
    rec["config"] = {"data": {"source": "cifar10"}, "model": {"arch": "resnet18"}, "batchnorm": False,
                     "normalizers": [{"name": norm, "options": {}, "overrides": {}, "label": None}],
                     "train": {"method": "free", "epochs": 30, "lr": 0.1, "eps": 8 / 255}, "seeds": [0],
                     "eval": {}, "device": "cpu"}
    rec["config"]["train"].update(train)
    return rec


def test_variant_names_the_differences_readably(tmp_path):
    res = tmp_path / "r"
    write(res, _resolved(lr=0.1), name="lr0.1")
    write(res, _resolved(lr=0.01), name="lr0.01")
    k5 = _resolved(lr=0.01)
    k5["config"]["normalizers"][0]["options"] = {"kernel": 5}
    write(res, k5, name="k5")
    over = _resolved(lr=0.01)
    over["config"]["normalizers"][0]["overrides"] = {"train.lr": 0.01}  # same lr, reached through an override
    write(res, over, name="override")
    lb = assemble(res)
    labels = sorted(g.label for g in lb.groups)
    assert labels == ["sn [kernel=5, lr=0.01]", "sn [lr=0.01, override lr=0.01]", "sn [lr=0.01]", "sn [lr=0.1]"]
    assert len(set(variants(lb.groups).values())) == 4


def test_an_outside_model_neither_misses_nor_adds_the_trained_grids_seeds(tmp_path):
    """A trained model of seeds 0 and 1 beside an outside model evaluated once
    with seed 5: each is complete; neither row reports the other's seeds missing."""
    res = tmp_path / "r"
    for seed in (0, 1):
        write(res, make_record(normalizer="sn", seed=seed, seeds=[0, 1]))
    write(res, make_record(normalizer="mine", seed=5, train_method="external"))
    lb = assemble(res)
    rows = {g.key[2]: g for g in lb.groups}
    assert rows["sn"].expected == [0, 1] and not rows["sn"].missing
    assert rows["mine"].expected == [5] and not rows["mine"].missing
    build_leaderboard(res, plots=False)
    table = pd.read_csv(res / "leaderboard.csv")
    assert set(table["status"]) == {"ok"}, table[["model", "status"]]
    assert list(table.sort_values("model")["n_expected"]) == [1, 2]
