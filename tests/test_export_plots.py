"""What a reader sees in the plots (issue 20, item 5): a model's bounded and unbounded
SimBA curves look different, acc_vs_eps draws no line across the unmeasured eps up to
a sanity point, the layer-norm caption sits under its tick labels, and the PDFs (for a
paper, whose own caption says it) carry no title or caption."""
import pytest

from leaderboard_records import EPS, make_record, write
from robustbench_convnorm.leaderboard import build_leaderboard, figures, plots

LAYERS = {"layers": [{"name": f"layer{i}.0.conv{j}", "spectral_norm": 1.0 + 0.1 * i + j}
                     for i in range(1, 5) for j in (1, 2)]}


def _caption(fig):
    return next(t for t in fig.texts if t.get_gid() == "caption")


def _records(res):
    for norm, bn, shift in (("sn", True, 0.0), ("sn", False, -2.0), ("convnorm", True, 1.0)):
        ev = {f"pgd10_eps{k}": {"kind": "whitebox", "type": "pgd", "eps": k / 255, "steps": 10, "step": 2 / 255,
                                "n": 500, "acc": 60 - 3 * k + shift} for k in (2, 4, 8)}
        ev["pgd10_eps0p5"] = {"kind": "whitebox", "type": "pgd", "eps": 0.5, "steps": 10, "step": 0.125, "n": 500,
                              "acc": 10.0}
        rec = make_record(normalizer=norm, batchnorm=bn, seed=0, simba=(55.0 + shift, 2800.0), extra_evals=ev,
                          lipschitz=LAYERS)
        rate = 20.0 + shift
        rec["metrics"].update(simba_bounded_success_rate=rate, simba_bounded_avg_queries=900.0)
        rec["evaluations"]["simba_bounded"] = {
            "kind": "blackbox", "type": "simba", "step": EPS, "linf_bound": EPS, "eps": EPS, "norm": "Linf",
            "n_images": 50, "max_iters": 1000,
            "curve": {"queries": [0, 300, 600, 1000], "success_rate": [0, rate / 3, rate / 2, rate]}}
        rec["evaluations"]["clean"]["n"] = 500
        write(res, rec)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """{stem: figure} and, per file written, which of title and caption it shows."""
    tmp = tmp_path_factory.mktemp("plots")
    _records(tmp / "results")
    figs, shown = {}, {}
    real_save, real_write = plots.save, figures.atomic.save_figure

    def keep(fig, out, stem):
        figs[stem] = fig
        return real_save(fig, out, stem)

    def record(fig, path, **kw):
        cap = _caption(fig)
        shown[path.name] = {"title": fig._suptitle.get_visible(), "caption": cap.get_visible()}
        return real_write(fig, path, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(plots, "save", keep)
    mp.setattr(figures.atomic, "save_figure", record)
    try:
        build_leaderboard(tmp / "results", tmp / "lb", formats=[])
    finally:
        mp.undo()
    return figs, shown


def test_bounded_and_unbounded_simba_curves_of_a_model_look_different(drawn):
    figs, _ = drawn
    (ax,) = figs["simba_success_vs_queries"].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    for model in ("sn+BN", "sn", "convnorm+BN"):
        free, bounded = lines[f"{model} simba"], lines[f"{model} simba_bounded"]
        assert free.get_color() == bounded.get_color()
        assert free.get_linestyle() != bounded.get_linestyle(), model
    # and no two curves of one colour share a style
    seen = [(line.get_color(), line.get_linestyle()) for line in ax.get_lines()]
    assert len(seen) == len(set(seen)), seen


def test_acc_vs_eps_draws_no_line_across_the_unmeasured_eps(drawn):
    figs, _ = drawn
    (ax,) = figs["acc_vs_eps"].axes
    sanity_x = 0.5 * 255
    joined = [line for line in ax.get_lines() if line.get_linestyle() not in ("None", "none", "")]
    apart = [line for line in ax.get_lines() if line.get_linestyle() in ("None", "none", "")
             and line.get_marker() not in ("None", "", None) and len(line.get_xdata())]
    assert joined and all(max(line.get_xdata()) < 0.5 * sanity_x for line in joined)
    assert any(min(line.get_xdata()) > 0.9 * sanity_x for line in apart)      # the sanity points, as markers
    assert "not joined" in _caption(figs["acc_vs_eps"]).get_text()


def test_the_layer_norm_caption_sits_under_its_tick_labels(drawn):
    figs, _ = drawn
    fig = figs["layer_norms"]
    renderer = fig.canvas.get_renderer()
    caption = _caption(fig).get_window_extent(renderer)
    labels = [t.get_window_extent(renderer) for ax in fig.axes for t in ax.get_xticklabels() if t.get_text()]
    assert labels and caption.y1 < min(b.y0 for b in labels)


def test_pdfs_for_a_paper_carry_no_title_or_caption_and_pngs_do(drawn):
    _, shown = drawn
    pdfs = {k: v for k, v in shown.items() if k.endswith(".pdf")}
    pngs = {k: v for k, v in shown.items() if k.endswith(".png")}
    assert len(pdfs) == len(pngs) == 5
    assert all(v == {"title": False, "caption": False} for v in pdfs.values()), pdfs
    assert all(v == {"title": True, "caption": True} for v in pngs.values()), pngs
