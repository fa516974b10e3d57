"""Certified results reach every table through the generic path (CSV, Markdown,
LaTeX, HTML), the network bound sits beside the conv-only product, and the
accuracy-vs-L2-radius plot draws each model's certified curve under its
empirical one."""
import pandas as pd
import pytest

from leaderboard_records import make_record, write
from robustbench_convnorm.leaderboard import build_leaderboard
from robustbench_convnorm.leaderboard import radius_plot


def _records(res):
    for norm, shift in (("sn", 0.0), ("cayley", 5.0)):
        rec = make_record(normalizer=norm, extra_evals={
            "certified": {"kind": "certified", "type": "certified", "eps": 36 / 255, "norm": "L2", "n": 4,
                          "acc": 10.0 + shift},
            "pgd10_l2": {"kind": "whitebox", "type": "pgd", "eps": 36 / 255, "norm": "L2", "steps": 10,
                         "step": 9 / 255, "n": 4, "acc": 60.0 + shift}})
        rec["metrics"]["lip_network_log10"] = 2.0 - shift / 10
        path = write(res, rec)
        pd.DataFrame({"index": [0, 1, 2, 3], "certified_correct": [True, False, False, False],
                      "certified_radius": [0.5, 0.1, 0.0, 0.05],
                      "pgd10_l2_correct": [True, True, False, True]}).to_csv(path.parent / "per_example.csv",
                                                                            index=False)


def test_certified_columns_and_the_network_bound_reach_every_table(tmp_path):
    res = tmp_path / "r"
    _records(res)
    written = build_leaderboard(res, formats=["md", "tex", "html"], plots=False)
    df = pd.read_csv(written["csv"])
    assert {"certified_acc_mean", "lip_network_log10_mean", "lip_product_log10_mean"} <= set(df.columns)
    md = written["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| rank |"))
    titles = [t.strip() for t in header.split("|")[1:-1]]
    assert "certified" in titles and "log10 network Lip bound (L2)" in titles
    assert titles.index("certified") > titles.index("worst case")       # after the empirical worst case
    assert titles.index("log10 network Lip bound (L2)") < titles.index("log10 conv-norm product")
    assert "certified" in written["tex"].read_text() and "certified" in written["html"].read_text()


def test_the_radius_plot_draws_certified_under_empirical(tmp_path, monkeypatch):
    res = tmp_path / "r"
    _records(res)
    drawn = []
    real = radius_plot.save

    def spy(fig, out, stem):
        for ax in fig.axes:
            for line in ax.get_lines():
                drawn.append((line.get_label(), list(line.get_xdata()), list(line.get_ydata())))
        return real(fig, out, stem)

    monkeypatch.setattr(radius_plot, "save", spy)
    written = build_leaderboard(res, formats=["md"])
    assert written["plot_acc_vs_l2_radius"].exists() and written["plot_acc_vs_l2_radius_pdf"].exists()
    lines = {label: (x, y) for label, x, y in drawn}
    x, y = lines["sn certified"] if "sn certified" in lines else next(v for k, v in lines.items()
                                                                      if k.endswith("certified"))
    assert y[0] == 75.0 and y[-1] == 0.0          # radii 0.5, 0.1, 0.05 exceed 0; none exceeds the largest
    emp = next(v for k, v in lines.items() if k.endswith("empirical"))
    assert emp[0] == pytest.approx([0.0, 36 / 255]) and emp[1][0] == 80.0     # clean at 0, then the L2 attack
