"""Published results (results/published/<name>/, made by `robustbench-convnorm
publish`): each folder's leaderboard is what its committed records give, and
the README quotes its ranking table as it is."""
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from leaderboard_records import make_record, write, write_per_example
from robustbench_convnorm.leaderboard import build_leaderboard
from robustbench_convnorm.leaderboard.board import assemble
from robustbench_convnorm.leaderboard.publish import ABOUT, SUMMARY, comparable, main, publish, summary

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = sorted(p for p in (ROOT / "results" / "published").glob("*") if (p / "runs").is_dir())


def ranking_rows(markdown: str):
    """The rows of the first ranking table of a leaderboard.md (lines of '| 1 | ...')."""
    rows, started = [], False
    for line in markdown.splitlines():
        if re.match(r"^\| \d+( \(tied\))? \|", line):
            rows.append(line)
            started = True
        elif started and not line.startswith("|"):
            break
    return rows


@pytest.mark.parametrize("folder", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_a_published_leaderboard_is_what_its_records_give(folder, tmp_path):
    assert not list(folder.rglob("checkpoint*")), "checkpoints are never published"
    assert (folder / ABOUT).exists()
    rebuilt = build_leaderboard(folder, tmp_path, formats=["md"], plots=False)
    assert comparable(rebuilt["md"].read_text()) == comparable((folder / "leaderboard.md").read_text())
    assert rebuilt["csv"].read_text() == (folder / "leaderboard.csv").read_text()
    assert rebuilt["pairwise_csv"].read_text() == (folder / "pairwise.csv").read_text()
    assert summary(assemble(folder)) == (folder / SUMMARY).read_text()


@pytest.mark.parametrize("folder", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_the_readme_quotes_the_published_ranking(folder):
    readme = (ROOT / "README.md").read_text()
    if f"results/published/{folder.name}" not in readme:
        pytest.skip(f"the README does not show results/published/{folder.name}")
    rows = [line for line in (folder / SUMMARY).read_text().splitlines() if line.startswith("| ")]
    assert rows and all(row in readme for row in rows), f"README's table differs from {folder}/{SUMMARY}"


def test_publish_copies_records_not_checkpoints_and_the_rebuild_matches(tmp_path):
    res = tmp_path / "res"
    correct = np.arange(40) < 30
    for name, shift in (("sn", 0), ("oni", 8)):
        rec = make_record(normalizer=name, pgd20=100.0 * (30 - shift) / 40, environment={"device_name": "CPU X"})
        write(res, rec)
        write_per_example(res, rec, {"clean_correct": np.ones(40, bool), "pgd20_correct": np.roll(correct, shift) &
                                     (np.arange(40) < 30 - shift), "worst_case_correct": correct})
        (res / "runs" / rec["run_id"] / "checkpoint.pt").write_bytes(b"weights")
        (res / "runs" / rec["run_id"] / "train_log.csv").write_text("epoch\n1\n")
    dest = tmp_path / "published" / "demo"
    written = publish(res, dest, command="make demo", note="A test.")
    assert not list(dest.rglob("checkpoint*"))
    assert sorted(p.name for p in (dest / "runs").iterdir()) == sorted(p.name for p in (res / "runs").iterdir())
    assert all({f.name for f in d.iterdir()} == {"record.json", "per_example.csv.gz", "train_log.csv"}
               for d in (dest / "runs").iterdir())
    for d in (dest / "runs").iterdir():  # gzipped whole, and the same bytes when published again
        original = (res / "runs" / d.name / "per_example.csv").read_bytes()
        assert gzip.decompress((d / "per_example.csv.gz").read_bytes()) == original
    assert not list(dest.rglob("*.pdf")) and "plot_pareto_pdf" not in written
    packed = {p: p.read_bytes() for p in dest.rglob("*.gz")}
    publish(res, dest, command="make demo", note="A test.")
    assert {p: p.read_bytes() for p in dest.rglob("*.gz")} == packed
    about = (dest / ABOUT).read_text()
    assert "`make demo`" in about and "CPU X" in about and "A test." in about
    assert ranking_rows(written["md"].read_text())
    table = written["summary"].read_text()
    assert "| rank | model | clean |" in table and "sn+BN" in table and "oni+BN" in table
    rebuilt = build_leaderboard(dest, tmp_path / "again", formats=["md"], plots=False)
    assert comparable(rebuilt["md"].read_text()) == comparable(written["md"].read_text())
    # a record edited after publishing no longer gives the published table
    path = next((dest / "runs").glob("*/record.json"))
    rec = json.loads(path.read_text())
    rec["metrics"]["pgd20_acc"] += 5
    path.write_text(json.dumps(rec))
    edited = build_leaderboard(dest, tmp_path / "edited", formats=["md"], plots=False)
    assert comparable(edited["md"].read_text()) != comparable(written["md"].read_text())
    # --rebuild builds the edited folder again in place, its PUBLISHED.md kept
    assert main(["--rebuild", str(dest)]) == 0
    assert comparable((dest / "leaderboard.md").read_text()) == comparable(edited["md"].read_text())
    assert (dest / ABOUT).read_text() == about and not list(dest.rglob("*.pdf"))


def test_publish_says_how_to_call_it(capsys):
    for argv in ([], ["res", "dest"], ["res", "dest", "--rebuild", "--command", "x"]):
        with pytest.raises(SystemExit):
            main(argv)
    assert "--rebuild DEST" in capsys.readouterr().err
