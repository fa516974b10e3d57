"""Numbers that are what they say (issue 19, item 7): Table 9 never averages the
condition-number placeholder, and the conv-norm product is not called a bound.
(load_model's refusal of integer images is in test_publish_load_model.py.)"""
import pytest

from leaderboard_records import make_record, write
from robustbench_convnorm import lipschitz as lip
from robustbench_convnorm.leaderboard import build_leaderboard
from robustbench_convnorm.lipschitz.spectra import COND_FLOOR

COND_PLACEHOLDER = COND_FLOOR ** -0.5   # what a channel with an exact zero in its spectrum records: 1e6


def _layers(conds, max_conds=None):
    max_conds = max_conds or conds
    return {"layers": [{"name": f"l{i}", "channel_cond": c, "channel_cond_max": m}
                       for i, (c, m) in enumerate(zip(conds, max_conds))]}


def _record(normalizer, seed, conds, max_conds=None):
    return {"status": "finished", "normalizer": normalizer, "normalizer_options": {}, "batchnorm": False,
            "dataset": "cifar10", "arch": "convnet", "train_method": "free", "train_eps": 8 / 255, "seed": seed,
            "lipschitz": _layers(conds, max_conds)}


def test_the_placeholder_is_never_averaged_as_a_measurement():
    # oni seed 0: one of 9 channels of layer l1 has an exact zero: the mean holds 1e6/9
    records = [_record("vanilla", 0, [4.0, 6.0]), _record("convnorm", 0, [1.0, 1.0]),
               _record("oni", 0, [2.0, (8 * 1.0 + COND_PLACEHOLDER) / 9], [2.0, COND_PLACEHOLDER]),
               _record("sn", 0, [3.0, COND_PLACEHOLDER])]
    rows = {r["normalizer"]: r for r in lip.table9(records)}
    assert rows["convnorm"]["mean_improvement"] == pytest.approx(4.0) and rows["convnorm"]["placeholder_runs"] == 0
    for name in ("oni", "sn"):
        assert rows[name]["mean_improvement"] is None and rows[name]["std"] is None
        assert rows[name]["runs"] == 0 and rows[name]["placeholder_runs"] == 1
    log_rows = {r["normalizer"]: r for r in lip.table9(records, mode="log_ratio")}
    assert log_rows["oni"]["mean_improvement"] is None
    text = lip.format_table9(lip.table9(records))
    oni_line = next(line for line in text.splitlines() if "| oni |" in line)
    cells = [c.strip() for c in oni_line.strip("|").split("|")]
    assert cells[4:] == ["n/a ¹", "–", "0", "1 ¹"]
    assert "¹ n/a: a layer's channel has an exact zero in its spectrum" in text
    assert "1e+06" in text and "5555" not in text and "-1" not in text


def test_a_placeholder_in_the_baseline_makes_every_comparison_n_a():
    records = [_record("vanilla", 0, [4.0, COND_PLACEHOLDER]), _record("convnorm", 0, [1.0, 1.0])]
    (row,) = lip.table9(records)
    assert row["mean_improvement"] is None and row["placeholder_runs"] == 1


def test_the_page_shows_n_a_with_its_footnote_and_the_conv_norm_product_label(tmp_path):
    res = tmp_path / "results"
    write(res, make_record(normalizer="vanilla", batchnorm=False, lipschitz=_layers([4.0, 6.0])))
    write(res, make_record(normalizer="oni", batchnorm=False,
                           lipschitz=_layers([2.0, (8 + COND_PLACEHOLDER) / 9], [2.0, COND_PLACEHOLDER])))
    written = build_leaderboard(res, tmp_path / "lb", plots=False)
    html = written["html"].read_text()
    table9 = html[html.index('<section id="table9">'):]
    table9 = table9[:table9.index("</section>")]
    assert "n/a ¹" in table9 and "an exact zero in its spectrum" in table9
    assert "-55" not in table9 and "111" not in table9
    for key in ("html", "md", "tex", "csv"):
        assert "Lip bound" not in written[key].read_text(), key
    for key in ("html", "md"):
        assert "log10 conv-norm product" in written[key].read_text(), key
