"""What a reader sees (issue 20, item 5): the ranked tables hold what ranks, the
sanity points (PGD at eps 0.5, bounded SimBA) get their own table, the page keeps
the model column in view, and the LaTeX ranked table fits a page."""
import re

import pytest

from leaderboard_records import EPS, make_record, write
from robustbench_convnorm.leaderboard import build_leaderboard

SANITY_TITLES = ("PGD-10 eps0p5", "SimBA bounded success %")


def _records(res):
    for seed in (0, 1):
        for norm, shift in (("sn", 0.0), ("convnorm(affine=true)", 1.0), ("oni", -1.0)):
            rec = make_record(normalizer=norm, seed=seed, seeds=[0, 1], pgd20=44.0 + shift + seed,
                              simba=(55.0 + seed, 2800.0), extra_evals={
                                  "pgd10_eps0p5": {"kind": "whitebox", "type": "pgd", "eps": 0.5, "steps": 10,
                                                   "step": 0.125, "n": 500, "acc": 10.0},
                                  "autoattack": {"kind": "whitebox", "type": "autoattack", "eps": EPS,
                                                 "version": "standard", "n": 500, "acc": 40.0 + shift}})
            rec["metrics"].update(simba_bounded_success_rate=20.0 + seed, simba_bounded_avg_queries=900.0)
            rec["evaluations"]["simba_bounded"] = {"kind": "blackbox", "type": "simba", "step": EPS,
                                                   "linf_bound": EPS, "eps": EPS, "norm": "Linf", "n_images": 50}
            rec["evaluations"]["clean"]["n"] = 500
            write(res, rec)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layout")
    _records(tmp / "results")
    return build_leaderboard(tmp / "results", tmp / "lb", plots=False)


def _table(html, opening):
    start = html.index(opening)
    return html[start:html.index("</table>", start)]


def test_the_page_ranks_without_the_sanity_points_and_shows_them_apart(built):
    html = built["html"].read_text()
    ranked = _table(html, '<table class="sortable ranked"')
    head = ranked[:ranked.index("</thead>")]
    assert "PGD-20" in head and "SimBA success %" in head
    for title in SANITY_TITLES:
        assert title not in head, title
    sanity = _table(html, '<table class="sanity"')
    assert all(t in sanity for t in SANITY_TITLES) and "10.00" in sanity
    assert sanity.count("<tr>") == 4                          # header and the three models
    assert "Sanity points, not ranked" in sanity
    # the model column stays in view: rank and model cells are pinned (position: sticky in the CSS)
    rows = ranked[ranked.index("<tbody>"):].split("<tr")[1:]
    assert all('class="pin-rank' in r and 'class="text pin-model"' in r for r in rows)
    css = html[html.index("<style>"):html.index("</style>")]
    rule = re.search(r"\.pin-rank, \.pin-model, \.pin-first \{([^}]*)\}", css).group(1)
    assert "position: sticky" in rule and "background" in rule
    assert re.search(r"\.pin-model \{ left: 5\.5em", css) and re.search(r"\.pin-rank \{ left: 0; width: 5\.5em", css)


def test_markdown_ranks_without_the_sanity_points(built):
    md = built["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| rank |"))
    assert "PGD-20" in header and not any(t in header for t in SANITY_TITLES)
    section = md[md.index("sanity points"):]
    sanity_header = next(line for line in section.splitlines() if line.startswith("| model |"))
    assert all(t in sanity_header for t in SANITY_TITLES)


#: \small in a 10 pt article: about 4.5 pt a character; booktabs' \tabcolsep 6 pt each side; \textwidth 345 pt
CHAR_PT, COLSEP_PT, TEXTWIDTH_PT = 4.5, 12.0, 345.0


def _natural_width(table):
    """An estimate of a tabular's natural width from its cells' lengths (LaTeX markup counted as printed)."""
    def printed(cell):
        cell = re.sub(r"\{\\scriptsize ([^}]*)\}", lambda m: " " * int(len(m.group(1)) * 0.7), cell)
        cell = cell.replace(r"$\pm$", "±").replace(r"\%", "%").replace(r"\_", "_").replace(r"\&", "&")
        return len(cell.strip())
    body = table[table.index(r"\toprule"):table.index(r"\bottomrule")]
    rows = [[printed(c) for c in re.split(r"(?<!\\)&", line[:-2])] for line in body.splitlines()
            if line.endswith(r"\\")]
    widths = [max(col) for col in zip(*rows)]
    return sum(w * CHAR_PT + COLSEP_PT for w in widths)


def test_the_latex_ranked_table_fits_a_page(built):
    tex = built["tex"].read_text()
    tables = tex.split(r"\begin{table}")[1:]
    ranked = next(t for t in tables if "tab:ranked-" in t)
    # bounded by the line width whatever the labels: each tabular sits in a \resizebox to \linewidth at most
    for t in tables:
        assert r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%" + "\n" + r"\begin{tabular}" in t
        assert r"\end{tabular}}" in t
    # and its natural width is near a page's, so the scaling leaves it readable
    assert _natural_width(ranked) <= 1.3 * TEXTWIDTH_PT, _natural_width(ranked)
    header = next(line for line in ranked.splitlines() if line.startswith("Rank &"))
    assert header.count("&") <= 6 and not any(t in header for t in SANITY_TITLES)
    assert "AutoAttack" in header and "clean" in header
