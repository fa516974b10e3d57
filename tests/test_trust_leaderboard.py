"""Issue 19, items 1 and 2, on the leaderboard's side: a model whose evaluation
failed a severe check is listed apart, unranked and marked unreliable in every
table and in the RobustBench export; the ranking column is the per-example
worst case over every white-box attack of the threat model."""
import json

import pandas as pd

from leaderboard_records import EPS, make_record, write
from robustbench_convnorm.leaderboard import build_leaderboard

# the six flags the input-quantizing outside model of issue 19 raised
MASKED_FLAGS = ["zero_grad", "nondeterministic", "pgd20>clean", "noise>pgd20", "pgd10>fgsm", "pgd20:loss_falls"]


def _record(normalizer, *, pgd10, pgd20, worst_white, flags=(), **kw):
    # a standard AutoAttack too, so that the model is a RobustBench entry
    aa = {"autoattack": {"kind": "whitebox", "type": "autoattack", "version": "standard", "eps": EPS,
                         "acc": worst_white}}
    rec = make_record(normalizer=normalizer, pgd10=pgd10, pgd20=pgd20, flags=flags, extra_evals=aa, **kw)
    rec["metrics"]["worst_case_whitebox_acc"] = worst_white
    return rec


def _board(tmp_path):
    res = tmp_path / "r"
    # the masked model has the best PGD-20 and the best worst case: on main it ranked #1 "ok"
    write(res, _record("quantized", clean=97.5, pgd10=97.3, pgd20=97.22, worst_white=97.0, flags=MASKED_FLAGS))
    write(res, _record("sn", pgd10=45.0, pgd20=44.0, worst_white=42.0))
    write(res, _record("oni", pgd10=40.0, pgd20=39.0, worst_white=38.0, flags=["pgd20:loss_falls"]))
    return res


def test_a_masked_model_is_listed_apart_and_marked_unreliable_everywhere(tmp_path):
    res = _board(tmp_path)
    written = build_leaderboard(res, formats=["md", "tex", "html"], plots=False, export=["robustbench"])
    df = pd.read_csv(written["csv"]).set_index("normalizer")
    assert df.loc["sn", "rank"] == 1 and df.loc["oni", "rank"] == 2          # a warning stays a badge
    assert pd.isna(df.loc["quantized", "rank"]) and bool(df.loc["quantized", "unreliable"])
    assert set(df.loc["quantized", "unreliable_flags"].split(";")) == set(MASKED_FLAGS) - {"pgd20:loss_falls"}
    assert not df.loc["sn", "unreliable"] and not df.loc["oni", "unreliable"]
    assert list(df.index)[-1] == "quantized"                                  # after the ranked models

    md = written["md"].read_text()
    ranked, apart = md.split("**Unreliable, not ranked** (1)")
    assert "| 1 | sn+BN" in ranked and "quantized" not in ranked.split("## cifar10")[1]
    assert "| unreliable | quantized+BN" in apart.split("###")[0]
    assert "quantized+BN (unreliable)" in md                                  # the paper layout's column
    assert "## Unreliable evaluations" in md and "unreliable because of" in md and "zero_grad" in md
    # a PGD-above-AutoAttack flag points to the command that says why; other severe flags do not
    assert ("robustbench-convnorm masking RUN_DIR" in md) == any(">autoattack" in f or ">apgd_ce_t" in f
                                                                 for f in MASKED_FLAGS)
    tex = written["tex"].read_text()
    assert "unreliable" in tex and "quantized+BN (unreliable)" in tex
    html = written["html"].read_text()
    assert ">unreliable<" in html and "unreliable, not ranked" in html

    export = written["export_robustbench"]
    info = {p.stem.split("-")[2]: json.loads(p.read_text()) for p in (export / "model_info").rglob("*.json")}
    extra = {p.stem.split("-")[2]: json.loads(p.read_text()) for p in (export / "convnorm_extra").rglob("*.json")}
    # RobustBench's own files: no field of their own for it, so the footnote its page shows says it
    assert info["quantized"]["footnote"].startswith("Unreliable evaluation (failed sanity checks: ")
    assert "zero_grad" in info["quantized"]["footnote"] and "unreliable" not in info["quantized"]
    assert "Unreliable" not in info["sn"].get("footnote", "")
    assert extra["quantized"]["unreliable"] is True and extra["quantized"]["rank"] is None
    assert set(extra["quantized"]["unreliable_flags"]) == set(MASKED_FLAGS) - {"pgd20:loss_falls"}
    assert extra["sn"]["unreliable"] is False and extra["sn"]["unreliable_flags"] == []
    assert extra["sn"]["rank"] == 1


def test_the_ranking_column_is_the_per_example_whitebox_worst_case(tmp_path):
    res = tmp_path / "r"
    # PGD-10's mean is the lowest white-box column by 0.2 points of noise; the
    # per-example worst case over every white-box attack orders the models the other way
    write(res, _record("sn", pgd10=49.8, pgd20=50.0, worst_white=40.0))
    write(res, _record("oni", pgd10=47.5, pgd20=47.7, worst_white=45.0))
    written = build_leaderboard(res, formats=["md"], plots=False)
    df = pd.read_csv(written["csv"])
    assert list(df["normalizer"]) == ["oni", "sn"] and list(df["rank"]) == [1, 2]
    md = written["md"].read_text()
    assert "Ranked within each dataset by **worst case (white-box)** (per example" in md
    # --rank-by still picks any column
    df = pd.read_csv(build_leaderboard(res, rank_by="pgd20_acc", formats=["md"], plots=False)["csv"])
    assert list(df["normalizer"]) == ["sn", "oni"]


def test_records_without_the_worst_case_still_rank_by_the_strongest_attack(tmp_path):
    res = tmp_path / "r"
    for norm, pgd20 in (("sn", 44.0), ("oni", 46.0)):
        write(res, make_record(normalizer=norm, pgd20=pgd20, pgd10=pgd20 + 1, train_eps=EPS))
    md = build_leaderboard(res, formats=["md"], plots=False)["md"].read_text()
    assert "Ranked within each dataset by **PGD-20**" in md


def test_an_input_quantizing_model_evaluated_by_the_protocol_is_not_ranked(tmp_path):
    """From the protocol's own flags to the tables: the quantizing model (whose
    PGD cannot move) scores far above a sound one and still is not ranked."""
    import torch
    from torch import nn

    from attacks import evaluate

    class Linear(nn.Module):
        def __init__(self, quantize):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.lin, self.quantize = nn.Linear(3 * 4 * 4, 10), quantize
            with torch.no_grad():
                self.lin.weight.copy_(torch.randn(self.lin.weight.shape, generator=g))

        def forward(self, x):
            return self.lin((torch.round(x * 4) / 4 if self.quantize else x).flatten(1))

    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 3, 4, 4, generator=g)
    with torch.no_grad():
        y = Linear(True)(x).argmax(1)
    cfg = {"batch_size": 16, "evaluators": [{"type": "clean"}, {"type": "pgd", "eps": 0.05, "step": 0.0125,
                                                                "steps": 5, "name": "pgd20"}]}
    res = tmp_path / "r"
    for name, quantize in (("quantized", True), ("sound", False)):
        report = evaluate(Linear(quantize), x, y, cfg, device="cpu", log=lambda s: None)
        m = report.metrics
        write(res, _record(name, clean=m["clean_acc"], pgd10=m["pgd20_acc"], pgd20=m["pgd20_acc"],
                           worst_white=m["worst_case_whitebox_acc"], flags=report.flags))
    written = build_leaderboard(res, formats=["md"], plots=False, export=["robustbench"])
    df = pd.read_csv(written["csv"]).set_index("normalizer")
    assert df.loc["quantized", "worst_case_whitebox_acc_mean"] > df.loc["sound", "worst_case_whitebox_acc_mean"]
    assert df.loc["sound", "rank"] == 1 and pd.isna(df.loc["quantized", "rank"])
    assert "zero_grad" in df.loc["quantized", "unreliable_flags"].split(";")
    extra = [json.loads(p.read_text()) for p in (written["export_robustbench"] / "convnorm_extra").rglob("*.json")]
    assert {e["label"]: e["unreliable"] for e in extra} == {"quantized+BN": True, "sound+BN": False}


def test_a_masking_flag_points_to_the_command_that_says_why(tmp_path):
    res = tmp_path / "r"
    write(res, _record("oni", pgd10=40.0, pgd20=39.0, worst_white=30.0, flags=["pgd20>apgd_ce_t"]))
    write(res, _record("sn", pgd10=45.0, pgd20=44.0, worst_white=42.0))
    md = build_leaderboard(res, formats=["md"], plots=False)["md"].read_text()
    assert "**oni+BN**" in md.split("## Unreliable evaluations")[1]
    assert "`robustbench-convnorm masking RUN_DIR`" in md
