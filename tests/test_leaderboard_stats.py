"""Uncertainty a reader can trust (issue 16, item 2): an interval for every
accuracy, and "tied" where the exact McNemar test on the same examples finds no
significant difference from the model ranked just above."""
import html
import math

import numpy as np
import pandas as pd
import pytest

from leaderboard_records import make_record, write, write_per_example
from robustbench_convnorm.leaderboard import build_leaderboard
from robustbench_convnorm.leaderboard.stats import mcnemar_exact, mcnemar_needed, seed_interval, wilson_interval

N = 200


def test_wilson_interval_known_values():
    assert wilson_interval(50.0, 100) == pytest.approx((40.383, 59.617), abs=1e-3)
    lo, hi = wilson_interval(0.0, 20)
    assert lo == 0.0 and hi == pytest.approx(16.113, abs=1e-3)  # no negative bound at 0 %
    lo, hi = wilson_interval(100.0, 360)
    assert hi == pytest.approx(100.0) and lo == pytest.approx(100 * 360 / (360 + 1.959964 ** 2), abs=1e-3)
    assert all(math.isnan(v) for v in wilson_interval(50.0, float("nan")))


def test_mcnemar_exact_and_seed_interval_by_hand():
    # 10 vs 2 discordant: P(X <= 2 | Bin(12, 1/2)) doubled
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(7, 7) == 1.0
    lo, hi = seed_interval([1.0, 2.0, 3.0])
    assert (lo + hi) / 2 == pytest.approx(2.0) and (hi - lo) / 2 == pytest.approx(4.302653 / math.sqrt(3))


def flip(correct, right_to_wrong, wrong_to_right):
    """A copy of `correct` with that many right answers made wrong and wrong ones right."""
    out = correct.copy()
    out[np.flatnonzero(correct)[:right_to_wrong]] = False
    out[np.flatnonzero(~correct)[:wrong_to_right]] = True
    return out


def write_model(res, normalizer, seed, correct, seeds=(0,)):
    acc = 100.0 * correct.mean()
    rec = make_record(normalizer=normalizer, seed=seed, seeds=list(seeds), pgd20=acc, pgd10=acc + 1,
                      fgsm=acc + 2, clean=90.0)
    for ev in rec["evaluations"].values():
        ev["n"] = N
    write(res, rec)
    clean = np.ones(N, dtype=bool)
    write_per_example(res, rec, {"clean_correct": clean, "pgd20_correct": correct, "worst_case_correct": correct})


def test_adjacent_models_are_tied_unless_mcnemar_says_otherwise(tmp_path):
    res = tmp_path / "r"
    a = np.arange(N) < 140                      # 70.0 %
    b = flip(a, 5, 2)                           # 68.5 %: 5 vs 2 discordant examples, p = 0.45
    c = flip(b, 40, 3)                          # 50.0 %: 40 vs 3, p < 0.001
    for name, correct in (("convnorm", a), ("sn", b), ("oni", c)):
        write_model(res, name, 0, correct)
    written = build_leaderboard(res, formats=["md", "tex"], plots=False)
    df = pd.read_csv(written["csv"]).set_index("normalizer")
    assert list(df.index) == ["convnorm", "sn", "oni"]
    assert pd.isna(df.loc["convnorm", "tied_with_above"])
    assert df.loc["sn", "tied_with_above"] == True  # noqa: E712 (a CSV boolean)
    assert df.loc["sn", "p_vs_above"] == pytest.approx(mcnemar_exact(5, 2))
    assert df.loc["oni", "tied_with_above"] == False  # noqa: E712
    assert df.loc["oni", "p_vs_above"] == pytest.approx(mcnemar_exact(40, 3))
    assert "McNemar exact: 200 paired examples (seed 0): 5 " in df.loc["sn", "test_vs_above"]
    md = written["md"].read_text()
    assert "| 1 | convnorm+BN" in md and "| 2 (tied) | sn+BN" in md and "| 3 | oni+BN" in md
    assert "α = 0.05" in md
    assert "2 (tied) & sn+BN" in written["tex"].read_text()
    # one seed: Wilson's interval from the 200 examples, for every accuracy
    for norm, correct in (("convnorm", a), ("oni", c)):
        lo, hi = wilson_interval(100.0 * correct.mean(), N)
        assert (df.loc[norm, "pgd20_acc_ci_lo"], df.loc[norm, "pgd20_acc_ci_hi"]) == pytest.approx((lo, hi))
        assert df.loc[norm, "fgsm_acc_ci_lo"] < df.loc[norm, "fgsm_acc_mean"] < df.loc[norm, "fgsm_acc_ci_hi"]
    assert f"{100 * a.mean():.2f} [{wilson_interval(70.0, N)[0]:.2f}, {wilson_interval(70.0, N)[1]:.2f}]" in md


def test_seeds_pool_their_discordant_examples_and_intervals_use_the_seed_spread(tmp_path):
    res = tmp_path / "r"
    a = np.arange(N) < 120
    for seed in (0, 1):   # 5 vs 0 on seed 0 (p = 0.0625 alone), 11 vs 1 over both (p = 0.006)
        write_model(res, "convnorm", seed, a, seeds=(0, 1))
        write_model(res, "sn", seed, flip(a, 5 + seed, seed), seeds=(0, 1))
    df = pd.read_csv(build_leaderboard(res, formats=[], plots=False)["csv"]).set_index("normalizer")
    assert mcnemar_exact(5, 0) > 0.05
    assert df.loc["sn", "tied_with_above"] == False  # noqa: E712
    assert df.loc["sn", "p_vs_above"] == pytest.approx(mcnemar_exact(11, 1))
    assert "400 paired examples (seed 0,1)" in df.loc["sn", "test_vs_above"]
    accs = [100 * flip(a, 5 + s, s).mean() for s in (0, 1)]
    assert (df.loc["sn", "pgd20_acc_ci_lo"], df.loc["sn", "pgd20_acc_ci_hi"]) == pytest.approx(seed_interval(accs))


def test_mcnemar_needed_by_hand_and_by_simulated_power():
    """Connor's sample size by hand, and the power it promises checked by
    simulation: pairs drawn with the observed discordance rates, tested by the
    same exact McNemar the tables use, separate at alpha = 0.05 about 80 % of the
    time at that size and clearly less often at a third of it."""
    d, delta = 0.1, 0.04   # 7 % vs 3 % of 1000 examples discordant
    by_hand = math.ceil((1.959964 * math.sqrt(d) + 0.841621 * math.sqrt(d - delta ** 2)) ** 2 / delta ** 2)
    assert mcnemar_needed(70, 30, 1000) == by_hand == 489
    assert mcnemar_needed(30, 70, 1000) == by_hand           # symmetric in the direction
    assert mcnemar_needed(5, 5, 1000) == math.inf and math.isnan(mcnemar_needed(0, 0, 0))
    rng = np.random.default_rng(0)

    def power(n, trials=1500):
        draws = rng.multinomial(n, [0.07, 0.03, 0.90], size=trials)
        return np.mean([mcnemar_exact(b, c) < 0.05 for b, c, _ in draws])

    assert 0.74 <= power(by_hand) <= 0.88
    assert power(by_hand // 3) < 0.5


def test_the_table_says_what_a_separation_needs(tmp_path):
    """A tie's row says how many paired examples, test images at its seeds, or
    seeds at its images would separate the pair at the observed effect."""
    res = tmp_path / "r"
    a = np.arange(N) < 140
    write_model(res, "convnorm", 0, a)
    write_model(res, "sn", 0, flip(a, 5, 2))   # 5 vs 2 of 200: tied
    df = pd.read_csv(build_leaderboard(res, formats=[], plots=False)["csv"]).set_index("normalizer")
    needed = mcnemar_needed(5, 2, N)
    assert df.loc["sn", "needed_vs_above"] == needed and needed > N
    assert (f"about {int(needed)} paired examples: {int(needed)} test images at 1 seed(s), or "
            f"{math.ceil(needed / N)} seed(s) at {N} images") in df.loc["sn", "test_vs_above"]
    assert pd.isna(df.loc["convnorm", "needed_vs_above"])


def test_without_per_example_outcomes_nothing_is_called_tied(tmp_path):
    res = tmp_path / "r"
    write(res, make_record(normalizer="sn", pgd20=44.0))
    write(res, make_record(normalizer="oni", pgd20=43.9))
    df = pd.read_csv(build_leaderboard(res, formats=[], plots=False)["csv"]).set_index("normalizer")
    assert pd.isna(df.loc["oni", "tied_with_above"]) and "no per-example outcomes" in df.loc["oni", "test_vs_above"]


def test_simba_rates_on_different_images_use_fishers_test(tmp_path):
    res = tmp_path / "r"
    for norm, rate in (("convnorm", 53.5), ("oni", 55.9), ("sn", 60.6)):
        rec = make_record(normalizer=norm, batchnorm=False, train_method="natural", train_eps=None,
                          simba=(rate, 2500.0))
        for k in ("fgsm", "pgd10", "pgd20"):
            rec["metrics"].pop(f"{k}_acc")
            rec["evaluations"].pop(k)
        rec["metrics"].pop("worst_case_acc")
        rec["evaluations"]["simba"]["n_images"] = 1000
        write(res, rec)
    paths = build_leaderboard(res, formats=["md", "tex", "html"], plots=False)
    df = pd.read_csv(paths["csv"]).set_index("normalizer")
    # every caption names the test the ties came from
    for fmt in ("md", "tex", "html"):
        text = html.unescape(paths[fmt].read_text())
        assert "Fisher's exact test on the success counts" in text and "McNemar" not in text, fmt
    assert list(df.index) == ["convnorm", "oni", "sn"]
    assert df.loc["oni", "tied_with_above"] == True  # noqa: E712  535/1000 against 559/1000
    assert df.loc["sn", "tied_with_above"] == False  # noqa: E712  559/1000 against 606/1000
    assert df.loc["oni", "test_vs_above"].startswith("Fisher exact: unpaired: 535/1000 against 559/1000")
    assert df.loc["oni", "simba_success_rate_ci_lo"] == pytest.approx(wilson_interval(55.9, 1000)[0])


def test_every_pair_is_tested_not_only_neighbours(tmp_path):
    """Three models, each tied with its neighbour, the first and the last not:
    pairwise.csv holds all three pairs, each p the direct McNemar of that pair's
    discordant examples."""
    res = tmp_path / "r"
    a = np.arange(N) < 140
    b = flip(a, 4, 0)           # 4 vs 0 against a (p = 0.125)
    c = flip(b, 4, 0)           # 4 vs 0 against b, 8 vs 0 against a (p = 0.0078)
    for name, correct in (("convnorm", a), ("sn", b), ("oni", c)):
        write_model(res, name, 0, correct)
    written = build_leaderboard(res, formats=[], plots=False)
    board = pd.read_csv(written["csv"]).set_index("normalizer")
    assert board["tied_with_above"].dropna().all()              # neighbours: tied
    pairs = pd.read_csv(written["pairwise_csv"]).set_index(["upper", "lower"])
    assert len(pairs) == 3
    expected = {("convnorm", "sn"): (4, 0), ("sn", "oni"): (4, 0), ("convnorm", "oni"): (8, 0)}
    for (up, lo), (only_up, only_lo) in expected.items():
        row = pairs.loc[(f"{up}+BN", f"{lo}+BN")]
        assert row["p"] == pytest.approx(mcnemar_exact(only_up, only_lo))
        assert f"{only_up} only the upper model got right, {only_lo} only this one" in row["detail"]
    assert pairs.loc[("convnorm+BN", "oni+BN"), "tied"] == False  # noqa: E712
