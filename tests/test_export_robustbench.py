"""--export robustbench writes files RobustBench's own code reads (issue 19, item 6).

RobustBench's package (shipped in the venv by torchattacks) is imported without
its top-level __init__ (which needs torchvision) and without its model zoo (which
needs torchvision and downloads): the functions called are its own, reading the
exported JSON from a temporary model_info folder.
"""
import dataclasses
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from leaderboard_records import EPS, make_record, write
from robustbench_convnorm.leaderboard import build_leaderboard

_SPEC = importlib.util.find_spec("robustbench")
pytestmark = pytest.mark.skipif(_SPEC is None, reason="RobustBench's package is not installed")

#: a stand-in for RobustBench's page template (its package does not ship the .j2 file):
#: it shows the fields RobustBench's page shows, as RobustBench's template reads them
PAGE = ("{% for m in models %}<tr><td>{{ loop.index }}</td><td><a href='{{ m.link }}'>{{ m.name }}</a> "
        "{{ m.authors }}</td><td>{{ m.clean_acc }}%</td><td>{{ m[acc_field] }}%</td>"
        "<td>{{ m.architecture }}</td><td>{{ m.venue }}</td></tr>{% endfor %}")


@pytest.fixture
def rb(monkeypatch):
    """RobustBench's utils, template and enums modules; utils.model_dicts is a dict to fill."""
    import jinja2

    root = Path(_SPEC.origin).parent
    pkg = types.ModuleType("robustbench")
    pkg.__path__ = [str(root)]
    zoo = types.ModuleType("robustbench.model_zoo")
    zoo.__path__ = [str(root / "model_zoo")]
    zoo.model_dicts = {}
    monkeypatch.setitem(sys.modules, "robustbench", pkg)
    monkeypatch.setitem(sys.modules, "robustbench.model_zoo", zoo)
    if importlib.util.find_spec("requests") is None:  # only its download helpers use it
        monkeypatch.setitem(sys.modules, "requests", types.ModuleType("requests"))
    for name in ("robustbench.model_zoo.enums", "robustbench.utils", "robustbench.leaderboard",
                 "robustbench.leaderboard.template"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import robustbench.leaderboard.template as template
    import robustbench.model_zoo.enums as enums
    import robustbench.utils as utils

    for name in ("robustbench.model_zoo.enums", "robustbench.utils", "robustbench.leaderboard",
                 "robustbench.leaderboard.template"):
        monkeypatch.setitem(sys.modules, name, sys.modules[name])  # removed again after the test
    monkeypatch.setattr(template, "PackageLoader", lambda *a: jinja2.DictLoader({"leaderboard.html.j2": PAGE}))
    return types.SimpleNamespace(utils=utils, template=template, enums=enums, zoo=zoo.model_dicts)


def _aa(acc, version="standard", norm="Linf", eps=EPS):
    return {"autoattack": {"kind": "whitebox", "type": "autoattack", "eps": eps, "norm": norm, "version": version,
                           "n": 1000, "acc": acc}}


@pytest.fixture
def exported(tmp_path):
    res = tmp_path / "results"
    for seed in (0, 1):
        write(res, make_record(normalizer="sn", seed=seed, seeds=[0, 1], clean=82.0 + seed, pgd20=44.0 + seed,
                               extra_evals=_aa(41.0 + seed)))
        write(res, make_record(normalizer="convnorm", seed=seed, seeds=[0, 1], clean=84.0, pgd20=46.0,
                               extra_evals=_aa(43.0)))
        # PGD only: must not appear as if AutoAttack had run
        write(res, make_record(normalizer="oni", seed=seed, seeds=[0, 1], clean=80.0, pgd20=41.0))
        # AutoAttack, but not the standard version
        write(res, make_record(normalizer="tn", seed=seed, seeds=[0, 1], extra_evals=_aa(40.0, version="rand")))
    build_leaderboard(res, tmp_path / "lb", formats=[], export=["robustbench"], plots=False)
    return tmp_path / "lb" / "robustbench"


def test_every_exported_file_is_a_robustbench_model_info(rb, exported):
    files = sorted((exported / "model_info").rglob("*.json"))
    assert len(files) == 2
    fields = {f.name for f in dataclasses.fields(rb.utils.ModelInfo)}
    for path in files:
        entry = json.loads(path.read_text())
        assert set(entry) <= fields, set(entry) - fields   # the project's fields are kept apart
        info = rb.utils.ModelInfo(**entry)
        dataset, threat = path.parent.parent.name, path.parent.name
        assert rb.enums.BenchmarkDataset(info.dataset).value == dataset
        assert rb.enums.ThreatModel(threat).value == "Linf"
        # written the way RobustBench's files write them
        assert info.eps == "8/255"
        for key in ("clean_acc", "autoattack_acc"):
            assert isinstance(entry[key], str) and float(entry[key]) > 0
        for key in ("link", "authors", "venue", "name"):
            assert isinstance(entry[key], str)


def test_robustbench_builds_its_leaderboard_page_from_the_export(rb, exported):
    html = rb.template.generate_leaderboard("cifar10", "Linf", str(exported / "model_info"))
    rows = html.split("<tr>")[1:]
    assert len(rows) == 2
    assert "convnorm+BN" in rows[0] and "43.00%" in rows[0]      # ranked by AutoAttack, highest first
    assert "sn+BN" in rows[1] and "82.50%" in rows[1] and "41.50%" in rows[1]
    assert "None" not in html and "oni" not in html and "tn+BN" not in html


def test_robustbench_lists_the_models_and_their_bibtex(rb, exported, monkeypatch, capsys):
    ids = sorted(p.stem for p in (exported / "model_info" / "cifar10" / "Linf").glob("*.json"))
    rb.zoo[rb.enums.BenchmarkDataset.cifar_10] = {rb.enums.ThreatModel.Linf: {i: {} for i in ids}}
    monkeypatch.chdir(exported)          # RobustBench reads ./model_info
    rb.utils.list_available_models("cifar10", "Linf")
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if "sn+BN" in line or "convnorm+BN" in line]
    assert len(rows) == 2 and "43.00%" in rows[0] and "41.50%" in rows[1] and "82.50%" in rows[1]
    assert "None" not in table
    entries, _ = rb.utils.get_leaderboard_bibtex("cifar10", "Linf")
    assert entries == set()              # no paper to cite: venue N/A, which RobustBench skips
    latex = rb.utils.get_leaderboard_latex("cifar10", "Linf")
    assert "43.00" in latex and "41.50" in latex


def test_models_without_standard_autoattack_are_listed_apart_with_the_reason(exported):
    skipped = {s["label"]: s["reason"] for s in json.loads((exported / "not_exported.json").read_text())}
    assert set(skipped) == {"oni+BN", "tn+BN"}
    assert all("standard AutoAttack did not run" in r for r in skipped.values())
    extra = json.loads(next((exported / "convnorm_extra").rglob("*sn-bn*.json")).read_text())
    assert extra["autoattack_version"] == "standard" and extra["seeds"] == [0, 1]
    assert extra["accuracies"]["autoattack_acc"]["interval"] == "t over seeds"
    assert extra["eps"] == pytest.approx(EPS, abs=1e-4)


def test_data_sets_robustbench_does_not_know_are_not_written_as_its_own(rb, tmp_path):
    res = tmp_path / "results"
    write(res, make_record(normalizer="sn", dataset="digits", extra_evals=_aa(41.0)))
    write(res, make_record(normalizer="sn", dataset="cifar10-jpeg", extra_evals=_aa(42.0),
                           data_note="CIFAR-10 from the JPEG copy"))
    build_leaderboard(res, tmp_path / "lb", formats=[], export=["robustbench"], plots=False)
    root = tmp_path / "lb" / "robustbench"
    (path,) = (root / "model_info").rglob("*.json")
    entry = json.loads(path.read_text())
    assert rb.enums.BenchmarkDataset(entry["dataset"]) is rb.enums.BenchmarkDataset.cifar_10
    assert "JPEG" in entry["footnote"] and "not the official" in entry["footnote"]
    extra = json.loads(next((root / "convnorm_extra").rglob("*.json")).read_text())
    assert extra["dataset"] == "cifar10-jpeg"
    (skipped,) = json.loads((root / "not_exported.json").read_text())
    assert skipped["dataset"] == "digits" and "not one of RobustBench's" in skipped["reason"]


def test_eps_is_written_as_robustbench_writes_it():
    from robustbench_convnorm.leaderboard.export import eps_text

    assert eps_text(8 / 255, "Linf") == "8/255" and eps_text(4 / 255, "Linf") == "4/255"
    assert eps_text(0.5, "L2") == "0.5" and eps_text(0.03, "Linf") == "0.03"
