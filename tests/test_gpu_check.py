"""The GPU check: its plan fits a lent machine, its parts are budgeted, its
verdicts follow the measured-defaults rule, and (slow) its rehearsal runs."""
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import cifar_jpeg, gpu_check, gpu_prep, report, verdicts
from benchmarks.budget import run_part
from robustbench_convnorm import speed

ROOT = Path(__file__).resolve().parents[1]


def row(switch, normalizer, speedup, matches=True, baseline="plain", **extra):
    verdict = "on" if matches and speedup >= 1.03 else "off"
    return {"switch": switch, "normalizer": normalizer, "baseline": baseline, "speedup": str(speedup),
            "rel_diff": "1.0e-06" if matches else "5.0e-02", "matches": str(matches), "verdict": verdict,
            "first_step_s": "30.0", "error": "", **extra}


def test_verdicts_follow_the_rule_the_cpu_table_was_made_by():
    rows = [
        row("channels_last", "vanilla", 1.20), row("channels_last", "cayley", 1.10, matches=False),
        row("channels_last", "convnorm", 0.95),
        row("channels_last (with convnorm_fast)", "convnorm", 1.08, baseline="plain + convnorm_fast"),
        row("cudnn_benchmark", "vanilla", 1.02), row("cudnn_benchmark", "convnorm", 1.05),
        row("optimizer=foreach", "vanilla", 1.10), row("optimizer=foreach", "convnorm", 1.04),
        row("optimizer=foreach", "cayley", 1.00),
        row("optimizer=fused", "vanilla", 1.20), row("optimizer=fused", "convnorm", 1.15),
        row("optimizer=fused", "cayley", 1.01),
        row("convnorm_fast", "convnorm", 1.5),
        row("amp=bf16", "vanilla", 1.8), row("amp=bf16", "convnorm", 1.1), row("amp=bf16", "oni", 1.6, matches=False),
    ]
    table, amp, notes = verdicts.derive(rows, "cuda")
    # per normalizer: on where >= 3% faster and matching; ConvNorm's channels_last read on top of its fast path
    assert table["channels_last"] == ("vanilla", "convnorm")
    assert table["cudnn_benchmark"] == ("convnorm",)
    assert table["convnorm_fast"] is True
    # one kernel for all: both match everywhere and are faster for most; fused has the larger median speedup
    assert table["optimizer"] == "fused"
    # bf16 changes ONI beyond bf16 rounding: off for everyone
    assert amp is False and any("oni" in n for n in notes)
    # never measured here: PyTorch's own default on CUDA (eager)
    assert table["compile"] == speed.TORCH_DEFAULTS["cuda"]["compile"] is False
    # nothing measured at all: PyTorch's defaults, foreach SGD on CUDA
    assert verdicts.derive([], "cuda")[0] == speed.TORCH_DEFAULTS["cuda"]
    # measured and not faster: the plain path
    slow = [row("optimizer=foreach", n, 1.0) for n in ("vanilla", "convnorm")]
    assert verdicts.derive(slow, "cuda")[0]["optimizer"] == "for_loop"
    assert verdicts.derive([row("amp=bf16", n, 1.5) for n in ("vanilla", "sn")], "cuda")[1] is True


def test_the_recorded_cpu_table_is_what_its_measurements_say():
    """MEASURED_DEFAULTS['cpu'] follows its fast-path CSV, except compile, which
    the table keeps off for a stated reason (cold compilation); None for
    convnorm_fast defers to the layer's CPU default, which is on."""
    from robustbench_convnorm.normalizers.convnorm import FAST_PATH_DEFAULT

    rows = verdicts.read_rows(report.RESULTS / "cpu" / "fast_path.csv")
    table, amp, _ = verdicts.derive(rows, "cpu")
    recorded = speed.MEASURED_DEFAULTS["cpu"]
    for switch in ("channels_last", "cudnn_benchmark", "optimizer"):
        assert table[switch] == recorded[switch], switch
    assert table["convnorm_fast"] is FAST_PATH_DEFAULT["cpu"] and recorded["convnorm_fast"] is None
    assert table["compile"] and recorded["compile"] is False
    assert amp is speed.AMP_AUTO["cpu"] is False


def test_a_part_over_its_budget_is_cut_with_its_children_and_the_next_runs(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    spawn = ("import subprocess, sys, time; "
             "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
             f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    t0 = time.monotonic()
    cut = run_part("hangs", ["-c", spawn], 3, tmp_path / "hangs.log", cwd=tmp_path)
    assert cut.status == "cut" and time.monotonic() - t0 < 20 and "budget" in cut.note
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # the whole process group goes, not only the part's own process
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the part's child process outlived the cut")
    ok = run_part("next", ["-c", "print('fine')"], 30, tmp_path / "next.log", cwd=tmp_path)
    assert ok.status == "ok" and "fine" in (tmp_path / "next.log").read_text()
    bad = run_part("fails", ["-c", "raise SystemExit('broken on purpose')"], 30, tmp_path / "f.log", cwd=tmp_path)
    assert bad.status == "failed" and "broken on purpose" in bad.note


def test_the_plan_fits_a_lent_machine():
    """Nine minutes on one H100 (20 s of it left for the check's own start-up
    and packing), at most eight files back with plain names, one command
    under 2000 characters that carries the wheel and the data."""
    assert sum(p.budget_s for p in gpu_check.PARTS) <= 9 * 60 - 20
    assert all(p.estimate_s <= p.budget_s for p in gpu_check.PARTS)
    assert len(gpu_check.OUTPUTS) <= 8
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in gpu_check.OUTPUTS)
    assert set(report.GPU_CHECK_PARTS) <= set(gpu_check.OUTPUTS)
    assert {p for parts in report.GPU_CHECK_PARTS.values() for p in parts} <= {p.name for p in gpu_check.PARTS}
    assert [p.name for p in gpu_check.PARTS][:2] == ["environment", "tests"]
    command = gpu_prep.DEVICE_COMMAND
    assert len(command) <= 2000 and "--out $OUT" in command and ".whl/*.whl" in command
    assert "--data .data/cifar10-jpeg" in command and set(gpu_prep.CARRY) == {".whl", ".data"}
    ignored = (ROOT / ".gitignore").read_text().split()
    assert all(f"/{name}/" in ignored for name in gpu_prep.CARRY)  # carried, never committed


def test_the_gpu_runs_the_test_modules_that_mark_tests_cuda():
    """Only those are collected (the rehearsal checks what pytest then selects)."""
    files = gpu_check.cuda_test_files()
    assert {"tests/test_norm_common.py", "tests/test_speed.py", "tests/test_benchmarks.py"} <= set(files)
    assert "tests/test_configs.py" not in files
    marker = (ROOT / "pyproject.toml").read_text()
    assert '"cuda: needs a CUDA GPU' in marker  # registered, so -m cuda is not a typo's silent no-op


def test_junit_results_become_one_row_per_test(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite name="pytest">'
                   '<testcase classname="tests.test_a" name="test_ok" time="0.5"/>'
                   '<testcase classname="tests.test_a" name="test_bad" time="1.0">'
                   '<failure message="AssertionError: 1 != 2">trace</failure></testcase>'
                   '<testcase classname="tests.test_b" name="test_gpu" time="0">'
                   '<skipped message="no CUDA GPU"/></testcase></testsuite></testsuites>')
    rows = gpu_check.junit_rows(xml)
    assert [(r["test"], r["outcome"]) for r in rows] == [
        ("tests.test_a::test_ok", "passed"), ("tests.test_a::test_bad", "failed"), ("tests.test_b::test_gpu", "skipped")]
    assert rows[1]["message"] == "AssertionError: 1 != 2" and rows[0]["seconds"] == 0.5


def test_recording_takes_a_gpu_check_and_refuses_a_rehearsal(tmp_path):
    check = tmp_path / "check"
    check.mkdir()
    (check / "replay.csv").write_text("normalizer,batch\nvanilla,512\n")
    (check / "table8.csv").write_text("")  # a part that wrote nothing leaves the record alone
    (check / "check.json").write_text(json.dumps({"mode": "rehearsal", "environment": {"cuda_available": False}}))
    with pytest.raises(ValueError, match="not a GPU check"):
        report.record_gpu_check(check, tmp_path / "results")
    (check / "check.json").write_text(json.dumps({"mode": "gpu", "environment": {"cuda_available": True},
                                                  "parts": [{"name": "replay", "status": "ok"}]}))
    written = report.record_gpu_check(check, tmp_path / "results")
    assert written == [tmp_path / "results" / "cuda" / "normalizers.csv"]
    assert "vanilla,512" in written[0].read_text()


def test_recording_keeps_the_record_of_a_part_that_was_cut(tmp_path, capsys):
    """A part stopped at its budget leaves a partial CSV (the benchmarks write
    after every row): it must not replace the complete one recorded before."""
    results = tmp_path / "results"
    (results / "cuda").mkdir(parents=True)
    recorded = "normalizer,batch\nvanilla,128\nvanilla,512\nconvnorm,128\nconvnorm,512\n"
    (results / "cuda" / "normalizers.csv").write_text(recorded)
    (results / "cuda" / "fast_path.csv").write_text("switch,normalizer\ncompile,vanilla\n")
    check = tmp_path / "check"
    check.mkdir()
    (check / "replay.csv").write_text("normalizer,batch\nvanilla,128\n")            # cut after one row
    (check / "fast_path.csv").write_text("switch,normalizer\nchannels_last,vanilla\n")  # compile's rows missing
    (check / "attacks.csv").write_text("measure,median\nPGD-20,1.0\n")
    (check / "check.json").write_text(json.dumps({
        "mode": "gpu", "environment": {"cuda_available": True},
        "parts": [{"name": "replay", "status": "cut", "note": "over its budget of 45 s"},
                  {"name": "fast_path", "status": "ok"}, {"name": "compile", "status": "failed"},
                  {"name": "attacks", "status": "ok"}, {"name": "table8", "status": "skipped"}]}))
    written = report.record_gpu_check(check, results)
    assert written == [results / "cuda" / "attacks.csv"]
    assert (results / "cuda" / "normalizers.csv").read_text() == recorded
    assert (results / "cuda" / "fast_path.csv").read_text() == "switch,normalizer\ncompile,vanilla\n"
    err = capsys.readouterr().err
    assert "normalizers.csv" in err and "replay (cut" in err and "compile (failed" in err


def test_verdicts_of_a_folder_note_a_part_that_did_not_finish(tmp_path, capsys):
    (tmp_path / "fast_path.csv").write_text("switch,normalizer,baseline,speedup,rel_diff,matches,verdict,error\n"
                                            "channels_last,vanilla,plain,1.2,1e-06,True,on,\n")
    (tmp_path / "check.json").write_text(json.dumps({"mode": "gpu", "parts": [
        {"name": "fast_path", "status": "cut", "note": "over its budget"}, {"name": "compile", "status": "ok"}]}))
    assert verdicts.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "# note: fast_path.csv is incomplete" in out and "fast_path (cut" in out


def test_what_travels_is_the_tree_git_would_send_plus_the_carried_folders(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/.data/\n/ignored.bin\n")
    (tmp_path / "tracked.py").write_bytes(b"x" * 100)
    (tmp_path / "untracked.txt").write_bytes(b"y" * 10)
    (tmp_path / "ignored.bin").write_bytes(b"z" * 5000)
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "a.zip").write_bytes(b"d" * 1000)
    subprocess.run(["git", "add", "tracked.py", ".gitignore"], cwd=tmp_path, check=True)
    sizes = gpu_prep.travelling_bytes(tmp_path, carry=(".data", ".whl"))
    assert sizes == {"tree": 100 + 10 + len("/.data/\n/ignored.bin\n"), ".data": 1000, ".whl": 0}


def test_the_checkout_leaves_room_for_what_the_gpu_check_carries():
    """The tree (tracked files, published results included) plus train.zip, the
    test subset and the wheel must fit the 64 MiB a device call takes: a tree
    that grew past it would make the GPU check impossible to send."""
    tree = gpu_prep.travelling_bytes(ROOT, carry=())["tree"]
    assert tree + gpu_prep.CARRIED_BYTES <= gpu_prep.LIMIT_BYTES, (
        f"the checkout is {tree / 2 ** 20:.2f} MiB: with the carried data it is over 64 MiB")


def _jpeg_zip(path, split, per_class):
    from PIL import Image
    with zipfile.ZipFile(path, "w") as zf:
        for c, cls in enumerate(("b_cls", "a_cls", "c_cls")):   # written out of order on purpose
            for i in range(per_class):
                buf = io.BytesIO()
                Image.fromarray(np.full((4, 4, 3), 20 * c + i, np.uint8)).save(buf, "JPEG", quality=95)
                zf.writestr(f"{split}/{cls}/img{i:02d}.jpg", buf.getvalue())


def test_the_travelling_test_subset_is_the_images_the_evaluation_picks(tmp_path):
    """evaluated_subset keeps exactly x_test[sort(randperm(n, seed)[:k])] of the
    image-folder order (class, then name), so a GPU evaluation of the whole
    subset sees the images the CPU run's eval.n_examples picked."""
    from robustbench_convnorm.data.imagefolder import _load_split
    src = tmp_path / "src"
    src.mkdir()
    _jpeg_zip(src / "test.zip", "test", 7)
    full_x, full_y, classes = _load_split(src, "test", None, "RGB", None)
    cifar_jpeg.evaluated_subset(src, tmp_path / "sub", 8, seed=3)
    sub_x, sub_y, _ = _load_split(tmp_path / "sub", "test", classes, "RGB", None)
    idx = np.sort(torch.randperm(21, generator=torch.Generator().manual_seed(3)).numpy()[:8])
    assert np.array_equal(sub_x, full_x[idx]) and np.array_equal(sub_y, full_y[idx])
    assert not np.array_equal(idx, np.arange(8))  # a planted "first k" would fail
    again = cifar_jpeg.evaluated_subset(src, tmp_path / "again", 8, seed=3)
    assert again.read_bytes() == (tmp_path / "sub" / "test.zip").read_bytes()


@pytest.mark.slow
def test_the_rehearsal_runs_every_part_and_writes_every_file(tmp_path, request):
    """``--rehearse``: the GPU plan on the CPU at tiny sizes, on real JPEGs of
    the CIFAR-10 copy when it is at hand, generated images otherwise."""
    try:
        data = ["--data", str(request.getfixturevalue("cifar_jpeg_dir"))]
    except pytest.skip.Exception:
        data = []
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--rehearse", "--out", str(out), *data],
                         cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(gpu_check.OUTPUTS)
    check = json.loads((out / "check.json").read_text())
    assert check["mode"] == "rehearsal" and [p["status"] for p in check["parts"]] == ["ok"] * len(gpu_check.PARTS)
    assert check["e2e"]["ok"] and check["environment"]["torch"]
    equal = check["equal_compute"]
    assert equal["ok"] and len(equal["runs"]) == 3 and {r["status"] for r in equal["runs"]} == {"finished"}
    assert all(r["epochs"] >= 1 and r["budget"] == "3s" and r["train_seconds"] > 0 for r in equal["runs"])
    tests = (out / "tests.csv").read_text()
    assert "test_on_cuda" in tests and "skipped" in tests
    for name, at_least in (("replay.csv", 6), ("fast_path.csv", 10), ("attacks.csv", 3), ("table8.csv", 3)):
        assert len((out / name).read_text().strip().splitlines()) >= at_least + 1, name
    assert "paper_seconds" in (out / "table8.csv").read_text()
    summary = (out / "summary.md").read_text()
    for part in gpu_check.PARTS:
        assert f"| {part.name} | ok |" in summary
    assert "MEASURED_DEFAULTS" in summary and "'cpu': {" in summary
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "logs/e2e.log" in names and "junit.xml" in names and "equal_compute/equal_compute.yaml" in names
    assert any(n.startswith("equal_compute/results/runs/") and n.endswith("record.json") for n in names)
    assert not any(n.endswith(".pt") for n in names)
    print(f"rehearsal: {wall:.0f} s wall, {check['wall_s']} s inside")
