"""The leaderboard command: bad output folders and misspelt names get one message
and exit 2 (issue 12, item 8), --format picks the outputs, --export robustbench
writes RobustBench model-info entries (issue 16, item 5; issue 19, item 6: RobustBench's
fields only, the project's apart)."""
import json
import subprocess
import sys

import pytest

from leaderboard_records import EPS, ROOT, make_record, write
from robustbench_convnorm import atomic
from robustbench_convnorm.leaderboard import build_leaderboard, main


@pytest.fixture
def results(tmp_path):
    res = tmp_path / "results"
    for seed in (0, 1):
        write(res, make_record(normalizer="sn", seed=seed, seeds=[0, 1], clean=82.0 + seed, pgd20=44.0 + seed,
                               data_note="CIFAR-10 from the JPEG copy, not the official data",
                               extra_evals={"autoattack": {"kind": "whitebox", "type": "autoattack", "eps": EPS,
                                                           "norm": "Linf", "version": "standard", "n": 1000,
                                                           "acc": 41.0 + seed}}))
        write(res, make_record(normalizer="oni", seed=seed, seeds=[0, 1], clean=80.0, pgd20=41.0))
    return res


def cli(*args):
    return subprocess.run([sys.executable, "-m", "robustbench_convnorm.leaderboard", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_out_under_a_regular_file_is_one_message_not_a_traceback(results, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = cli(results, "--out", blocker / "lb")   # fails for root too: no folder can exist under a file
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(blocker / "lb") in errors[0] and "--out" in errors[0]
    assert proc.stdout == ""


def test_out_pointing_at_a_file_is_one_message(results, tmp_path, capsys):
    target = tmp_path / "leaderboard.html"
    target.write_text("old page")
    assert main([str(results), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and str(target) in err
    assert target.read_text() == "old page"


def test_an_unwritable_folder_is_one_message(results, tmp_path, capsys, monkeypatch):
    # root writes into read-only folders; an OS refusal is simulated where the writes happen
    def refuse(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "atomic_write", refuse)
    assert main([str(results), "--out", str(tmp_path / "ro"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Permission denied" in err and str(tmp_path / "ro") in err


def test_format_picks_outputs_and_a_typo_suggests_the_name(results, tmp_path, capsys):
    assert main([str(results), "--out", str(tmp_path / "md"), "--format", "md", "--no-plots"]) == 0
    made = {p.name for p in (tmp_path / "md").iterdir()}
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard_runs.csv"} <= made
    assert "leaderboard.html" not in made and "leaderboard.tex" not in made
    capsys.readouterr()
    assert main([str(results), "--out", str(tmp_path / "x"), "--format", "htm"]) == 2
    err = capsys.readouterr().err
    assert "unknown leaderboard format 'htm' (did you mean 'html'?)" in err and "md" in err and "tex" in err
    assert not (tmp_path / "x").exists()  # nothing written before the names are checked
    assert main([str(results), "--export", "robustbnech"]) == 2
    assert "did you mean 'robustbench'?" in capsys.readouterr().err


def test_export_robustbench_model_info(results, tmp_path):
    written = build_leaderboard(results, tmp_path / "lb", formats=[], export=["robustbench"], plots=False)
    root = written["export_robustbench"]
    (path,) = (root / "model_info" / "cifar10" / "Linf").glob("*.json")
    sn = json.loads(path.read_text())
    # RobustBench's ModelInfo fields only, written as its files write them (strings, eps 8/255)
    assert set(sn) <= {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                       "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote"}
    assert sn["dataset"] == "cifar10" and sn["architecture"] == "resnet18" and sn["name"] == "sn+BN"
    assert sn["eps"] == "8/255" and sn["clean_acc"] == "82.50" and sn["autoattack_acc"] == "41.50"
    assert "JPEG copy" in sn["footnote"]
    # the project's fields, apart
    extra = json.loads((root / "convnorm_extra" / "cifar10" / "Linf" / path.name).read_text())
    assert extra["autoattack_version"] == "standard" and extra["threat_model"] == "Linf"
    assert extra["eps"] == pytest.approx(EPS, abs=1e-4) and isinstance(extra["eps"], float)
    assert extra["data_note"] == "CIFAR-10 from the JPEG copy, not the official data"
    assert extra["seeds"] == [0, 1] and extra["accuracies"]["pgd20_acc"]["std"] == pytest.approx(0.7071, abs=1e-4)
    lo, hi = extra["accuracies"]["autoattack_acc"]["ci95"]
    assert lo < 41.5 < hi and extra["accuracies"]["autoattack_acc"]["interval"] == "t over seeds"
    assert extra["accuracies"]["pgd20_acc"]["interval"] == "t over seeds"
    # no AutoAttack for oni: not exported as if it had it, and the reason is written down
    (oni,) = json.loads((root / "not_exported.json").read_text())
    assert oni["label"] == "oni+BN" and "AutoAttack did not run" in oni["reason"]


def test_export_names_the_interval_each_accuracy_has(tmp_path):
    """Two seeds, one of which ran PGD-50 too: PGD-50's interval is Wilson's over
    its one run, not the t interval over seeds that the entry's two seeds suggest."""
    res = tmp_path / "results"
    aa = {"kind": "whitebox", "type": "autoattack", "eps": EPS, "norm": "Linf", "version": "standard", "acc": 40.0}
    write(res, make_record(normalizer="sn", seed=0, seeds=[0, 1], extra_evals={"autoattack": aa}))
    write(res, make_record(normalizer="sn", seed=1, seeds=[0, 1], pgd20=45.0, extra_evals={
        "autoattack": aa, "pgd50": {"kind": "whitebox", "eps": EPS, "step": 2 / 255, "steps": 50, "restarts": 1,
                                    "n": 1000, "acc": 43.0}}))
    written = build_leaderboard(res, tmp_path / "lb", formats=[], export=["robustbench"], plots=False)
    (entry,) = [json.loads(p.read_text()) for p in (written["export_robustbench"] / "convnorm_extra").rglob("*.json")]
    assert entry["seeds"] == [0, 1]
    assert entry["accuracies"]["pgd20_acc"]["interval"] == "t over seeds"
    pgd50 = entry["accuracies"]["pgd50_acc"]
    assert pgd50["interval"] == "wilson" and pgd50["std"] is None
    assert pgd50["ci95"][0] < 43.0 < pgd50["ci95"][1]
