"""What the leaderboard writes besides the CSVs (issue 16, items 1, 3, 4): the
self-contained page, the LaTeX tables and the paper plots."""
import re
from html.parser import HTMLParser

import matplotlib.colors as mcolors
import pandas as pd
import pytest

from leaderboard_records import EPS, make_record, write
from robustbench_convnorm.leaderboard import build_leaderboard, plots

NOTE = "CIFAR-10 from the JPEG copy_1, not 100% official"
LAYERS = {"layers": [{"name": "conv1", "spectral_norm": 2.0}, {"name": "layer1.0.conv1", "spectral_norm": 1.3},
                     {"name": "linear", "spectral_norm": 0.8}]}


@pytest.fixture
def results(tmp_path):
    res = tmp_path / "results"
    for seed in (0, 1):
        sweep = {f"pgd20_eps{k}": {"kind": "whitebox", "type": "pgd", "eps": k / 255, "steps": 20, "step": 2 / 255,
                                   "n": 500, "acc": 70 - 3 * k - seed} for k in (2, 4, 16)}
        sweep["autoattack"] = {"kind": "whitebox", "type": "autoattack", "eps": EPS, "version": "standard",
                               "n": 500, "acc": 40.0 + seed}
        for norm, shift in (("sn", 0.0), ("conv_norm&co", 1.0)):
            rec = make_record(normalizer=norm, seed=seed, seeds=[0, 1, 2], pgd20=44.0 + shift + seed,
                              simba=(55.0 + seed, 2800.0), extra_evals=sweep, data_note=NOTE,
                              flags=["pgd_above_fgsm"] if norm == "sn" else [], lipschitz=LAYERS)
            rec["evaluations"]["clean"]["n"] = 500
            write(res, rec)
    write(res, make_record(normalizer="<b>oni</b>", seed=0, seeds=[0, 1, 2], status="failed",
                           error={"epoch": 3, "reason": "NaN loss <at> epoch 3"}), name="oni-s0")
    return res


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            self.attrs.append((tag, k, v or ""))
            if k == "id":
                self.ids.add(v)


def test_page_is_self_contained_escaped_and_complete(results):
    written = build_leaderboard(results, formats=["html"])
    page = written["html"].read_text()
    doc = Collect()
    doc.feed(page)
    # nothing fetched: no external script, style, image or font; every picture inline
    for tag, key, value in doc.attrs:
        if key in ("src", "href"):
            assert value.startswith(("data:", "#")) or re.fullmatch(r"[\w.-]+\.pdf", value), (tag, key, value)
    assert "<style>" in page and "<script>" in page and "http://" not in page and "https://" not in page
    assert sum(1 for t, k, v in doc.attrs if t == "img" and v.startswith("data:image/png;base64,")) >= 5
    # every cell escaped: a hostile label stays text
    assert "<b>oni</b>" not in page and "&lt;b&gt;oni&lt;/b&gt;" in page and "NaN loss &lt;at&gt; epoch 3" in page
    # the settings a reader needs, at the top
    settings = page[page.index('id="settings"'):page.index('id="ranking-')]
    for text in ("cifar10", NOTE, "8/255", '<td class="">20</td>', '<td class="">2/255</td>', "500",
                 "version standard", "simba", "α = 0.05"):
        assert text in settings, text
    # the ranked table: sortable, both cell views, the AutoAttack version in its column name
    ranked = page[page.index('class="sortable ranked"'):page.index("</table>", page.index('class="sortable ranked"'))]
    assert "AutoAttack (standard)" in ranked and 'class="ms"' in ranked and 'class="ci"' in ranked
    assert 'data-sort="' in ranked and 'class="flag">pgd_above_fgsm<' in ranked
    # every model links to its own section, the failed one too
    links = [v[1:] for t, k, v in doc.attrs if k == "href" and v.startswith("#model-")]
    assert len(set(links)) == 3 and set(links) <= doc.ids
    problems = page[page.index('id="problems"'):page.index('id="models"')]
    assert "seed 0 failed at epoch 3" in problems and "seeds 1,2 have no record" in problems
    assert "sanity-check flags: pgd_above_fgsm" in problems


def test_latex_is_booktabs_escaped_and_ready_to_input(results):
    tex = build_leaderboard(results, formats=["tex"], plots=False)["tex"].read_text()
    assert "\\documentclass" not in tex and "\\begin{document}" not in tex
    assert tex.count("\\begin{table}") == tex.count("\\end{table}") == 2  # paper layout + ranked table
    assert tex.count("\\toprule") == tex.count("\\midrule") == tex.count("\\bottomrule") == 2
    assert "conv\\_norm\\&co" in tex and "conv_norm&co" not in tex and "100\\% official" in tex
    assert "\\textless{}b\\textgreater{}oni" in tex and "<b>" not in tex
    # the paper's Table 1: attacks as rows, models as columns, mean ± std
    paper = tex[:tex.index("\\end{table}")]
    header = next(line for line in paper.splitlines() if line.startswith("Attack &"))
    cells = lambda line: line.count("&") - line.count("\\&")  # noqa: E731
    assert cells(header) == 3  # three models
    rows = [line for line in paper.splitlines() if line.endswith("\\\\") and not line.startswith("Attack")]
    assert [r.split(" & ")[0] for r in rows][:4] == ["clean", "FGSM", "PGD-10", "PGD-20"]
    assert all(cells(r) == 3 for r in rows)
    assert "44.50 $\\pm$ 0.71" in paper
    align = re.search(r"\\begin\{tabular\}\{(\w+)\}", paper).group(1)
    assert len(align) == 4
    assert tex.count("{") - tex.count("\\{") == tex.count("}") - tex.count("\\}")


def _colour(artist):
    get = getattr(artist, "get_color", None) or (lambda: artist.get_children()[0].get_color())
    return mcolors.to_hex(get())


def test_plots_pdf_and_png_with_settings_intervals_and_one_colour_per_normalizer(results, monkeypatch):
    figs = {}
    real_save = plots.save

    def keep(fig, out, stem):
        figs[stem] = fig
        return real_save(fig, out, stem)

    monkeypatch.setattr(plots, "save", keep)
    written = build_leaderboard(results, formats=[])
    for key in ("plot_robust_vs_clean", "plot_acc_vs_eps", "plot_acc_vs_steps", "plot_simba_curve",
                "plot_layer_norms"):
        assert written[key].suffix == ".png" and written[key].stat().st_size > 0
        assert written[f"{key}_pdf"].read_bytes().startswith(b"%PDF")
    colours = {}
    for stem, fig in figs.items():
        text = " ".join([fig._suptitle.get_text()] + [t.get_text() for t in fig.texts]
                        + [ax.get_title() for ax in fig.axes])
        assert "cifar10-resnet18" not in text and "-s0" not in text  # titled by model, never by run id
        if stem != "layer_norms":
            assert "cifar10" in text and "500 test images" in text and NOTE in text, stem
            assert "95% intervals" in text or "SimBA" in text, stem
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:  # outside the data: anchored right of the axes
                assert legend.get_bbox_to_anchor().transformed(ax.transAxes.inverted()).x0 >= 1.0, stem
                for handle, label in zip(legend.legend_handles, [t.get_text() for t in legend.get_texts()]):
                    name = label.split(" ")[0].split("+")[0]
                    if name != "σ":
                        colours.setdefault(name, set()).add(_colour(handle))
    caption = next(t.get_text() for t in figs["robust_vs_clean"].texts if t.get_gid() == "caption")
    assert "AutoAttack (standard)" in figs["robust_vs_clean"]._suptitle.get_text()
    assert "eps 8/255" in caption and "version standard" in caption
    assert "eps" in figs["acc_vs_steps"]._suptitle.get_text() and "20 steps" in figs["acc_vs_eps"]._suptitle.get_text()
    assert set(colours) == {"sn", "conv_norm&co"}
    assert all(len(c) == 1 for c in colours.values()), colours      # the same colour in every plot
    assert colours["sn"] == {"#ff7f0e"}                              # a shipped normalizer's fixed colour
    layer_ax = figs["layer_norms"].axes[0]
    assert any(line.get_ydata()[0] == 1.0 for line in layer_ax.get_lines())  # the σ = 1 line
    assert "cifar10 · resnet18" in layer_ax.get_title()


def test_metrics_of_the_new_attack_results_get_titles_and_places(tmp_path):
    res = tmp_path / "r"
    for norm, shift in (("sn", 0.0), ("oni", -3.0)):
        rec = make_record(normalizer=norm, worst=30.0 + shift, simba=(60.0, 900.0), extra_evals={
            "autoattack_fast": {"kind": "whitebox", "type": "autoattack", "eps": EPS, "version": "fast",
                                "acc": 38.0 + shift}})
        rec["metrics"].update(worst_case_whitebox_acc=37.0 + shift, simba_prob_success_rate=70.0,
                              simba_prob_avg_queries=800.0, simba_prob_saturated_frac=0.12)
        rec["evaluations"]["simba_prob"] = {"kind": "blackbox", "type": "simba", "step": 0.2, "n_images": 100}
        write(res, rec)
    written = build_leaderboard(res, formats=["md", "tex"], plots=False)
    df = pd.read_csv(written["csv"])
    md = written["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| rank |"))
    titles = [t.strip() for t in header.split("|")[1:-1]]
    order = ["clean", "FGSM", "PGD-10", "PGD-20", "AutoAttack (fast)", "worst case (white-box)", "worst case",
             "SimBA success %", "SimBA avg queries", "SimBA prob success %", "SimBA prob avg queries"]
    assert [t for t in titles if t in order] == order
    # the per-example worst case over every white-box attack ranks (issue 19, item 2)
    assert "Ranked within each dataset by **worst case (white-box)**" in md
    assert df["simba_prob_saturated_frac_mean"].tolist() == [0.12, 0.12]
    assert "AutoAttack (fast)" in written["tex"].read_text()
