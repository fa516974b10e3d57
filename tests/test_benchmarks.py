"""The benchmark scripts run (tiny sizes) and the report judges targets right."""
import csv
import dataclasses

import pytest
import torch

from benchmarks import attacks as attacks_bench
from benchmarks import fast_path, lipschitz_models, normalizers, report, table8
from benchmarks.replay import FreeReplay
from robustbench_convnorm import speed


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_normalizer_benchmark_rows_name_where_and_how_they_were_measured(tmp_path):
    out = tmp_path / "n.csv"
    assert normalizers.main(["--device", "cpu", "--batches", "4,6", "--width", "0.0625", "--steps", "1",
                             "--warmup", "0", "--only", "convnorm", "--threads", "1", "--out", str(out)]) == 0
    rows = read(out)
    assert [(r["normalizer"], r["batch"]) for r in rows] == [
        ("vanilla", "4"), ("convnorm", "4"), ("vanilla", "6"), ("convnorm", "6")]
    for r in rows:
        for column in ("device", "device_name", "torch", "dtype", "batch", "command", "images_per_s",
                       "time_vs_vanilla", "peak_mem_mb"):
            assert r[column] != ""
        assert r["command"].startswith("python -m benchmarks.normalizers") and "--out" not in r["command"]
        assert float(r["images_per_s"]) > 0
    assert all(float(r["time_vs_vanilla"]) == 1.0 for r in rows if r["normalizer"] == "vanilla")


def test_fast_path_benchmark_compares_results_and_speed(tmp_path):
    out = tmp_path / "f.csv"
    assert fast_path.main(["--device", "cpu", "--normalizers", "vanilla,convnorm", "--switches",
                           "optimizer=foreach,convnorm_fast", "--batch", "4", "--width", "0.0625", "--steps", "1",
                           "--warmup", "0", "--threads", "1", "--out", str(out)]) == 0
    rows = read(out)
    assert [(r["switch"], r["normalizer"]) for r in rows] == [
        ("optimizer=foreach", "vanilla"), ("optimizer=foreach", "convnorm"), ("convnorm_fast", "convnorm")]
    for r in rows:
        assert r["matches"] == "True" and float(r["rel_diff"]) <= 1e-4
        assert r["verdict"] in ("on", "off")


def test_attack_and_lipschitz_benchmarks_run(tmp_path):
    out = tmp_path / "a.csv"
    assert attacks_bench.main(["--device", "cpu", "--arch", "convnet", "--width", "0.25", "--batch", "4",
                               "--iters", "3", "--loop-images", "1", "--repeats", "1", "--out", str(out)]) == 0
    assert [r["measure"] for r in read(out)] == ["PGD-20", "SimBA batched", "SimBA one image at a time"]
    out = tmp_path / "l.csv"
    assert lipschitz_models.main(["--device", "cpu", "--arch", "convnet", "--width", "0.25", "--only", "sn",
                                  "--out", str(out)]) == 0
    assert [r["normalizer"] for r in read(out)] == ["vanilla", "sn"]


def write_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def env(**row):
    return {**row, "device_name": "GPU X", "torch": "2.x", "cpu_threads": "", "date": "today",
            "load_avg_1min": "", "command": "python -m benchmarks.normalizers"}


def test_report_judges_each_target_from_the_recorded_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    write_rows(tmp_path / "cuda" / "normalizers.csv", [
        env(normalizer="vanilla", batch=512, width=1.0, images_per_s=25000, time_vs_vanilla=1.0),
        env(normalizer="convnorm", batch=512, width=1.0, images_per_s=15000, time_vs_vanilla=1.67),
        env(normalizer="cayley", batch=512, width=1.0, images_per_s=9000, time_vs_vanilla=2.8),
    ])
    lines = {text: measured for text, measured, _ in report.targets()}
    assert lines["GPU, ResNet-18, batch 512: vanilla free-AT replay >= 20,000 images/s"].startswith("**met**")
    assert lines["GPU, batch 512: ConvNorm <= 1.4x vanilla's step time"].startswith("**not met**: 1.67x")
    assert lines["GPU, batch 512: Cayley <= 3x vanilla's step time"].startswith("**met**")
    assert lines["GPU: PGD-20 over the 10,000 test images <= 15 s (vanilla)"].startswith("not measured")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nprose stays\n")
    report.update_doc(doc)
    report.update_doc(doc)  # idempotent: one generated block, prose kept
    text = doc.read_text()
    assert text.count(report.START) == 1 and "prose stays" in text and "## Measured on CUDA" in text


@pytest.mark.parametrize("only", ["nonsense"])
def test_unknown_normalizer_is_one_clear_error(only, tmp_path):
    with pytest.raises(SystemExit, match="unknown normalizer"):
        normalizers.main(["--device", "cpu", "--only", only, "--out", str(tmp_path / "x.csv")])


def test_table8_set_without_a_value_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        table8.main(["--synthetic", "--set", "train.amp", "--work", str(tmp_path), "--out", str(tmp_path / "t.csv")])
    assert err.value.code == 2 and "expected key.path=value" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_a_replay_autotunes_cudnn_for_its_own_calls_only(monkeypatch):
    """cudnn.benchmark is process-global and speed.prepare_model sets it for
    good: without care, the plain path of a cudnn_benchmark comparison (built
    in the same process) would run autotuned too, and the row compare nothing."""
    real = speed.resolve
    monkeypatch.setattr(speed, "resolve",
                        lambda cfg, device, name=None: dataclasses.replace(real(cfg, device, name),
                                                                           cudnn_benchmark=True))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    replay = FreeReplay("vanilla", batch=2, width=0.0625, device=torch.device("cpu"), size=8)
    assert torch.backends.cudnn.benchmark is False  # building it left the process alone
    seen = []
    train_batch = replay.method.train_batch
    replay.method.train_batch = lambda x, y: (seen.append(torch.backends.cudnn.benchmark), train_batch(x, y))[1]
    replay.step()
    assert seen == [True] and torch.backends.cudnn.benchmark is False


def test_pgd_benchmark_can_time_the_whole_target_set(tmp_path):
    out = tmp_path / "a.csv"
    assert attacks_bench.main(["--device", "cpu", "--arch", "convnet", "--width", "0.25", "--batch", "4",
                               "--pgd-images", "10", "--iters", "2", "--loop-images", "1", "--repeats", "1",
                               "--out", str(out)]) == 0
    pgd = read(out)[0]
    assert pgd["measure"] == "PGD-20" and pgd["images"] == "10" and pgd["batch"] == "4"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_fast_path_switches_match_the_plain_path_on_cuda(tmp_path):
    """On a GPU the comparison runs in true fp32 (TF32 would blur it), so every
    switch that computes the same function matches (bf16 does not, by design);
    what the GPU check's verdicts rest on."""
    out = tmp_path / "f.csv"
    assert fast_path.main(["--device", "cuda", "--normalizers", "vanilla,convnorm", "--switches",
                           "channels_last,cudnn_benchmark,optimizer=foreach,optimizer=fused,convnorm_fast",
                           "--batch", "8", "--width", "0.25", "--steps", "2", "--warmup", "1", "--out", str(out)]) == 0
    rows = read(out)
    assert rows and all(not r.get("error") and r["matches"] == "True" for r in rows), rows


def test_layer_profile_splits_a_replay_by_phase_and_kind(tmp_path):
    """The phases add up to the replay, ConvNorm's time shows up under FFTs and
    Cayley's under linear algebra, and vanilla has neither."""
    from benchmarks import profile_layers

    out = tmp_path / "p.csv"
    assert profile_layers.main(["--only", "convnorm,cayley", "--width", "0.0625", "--size", "16", "--batch", "4",
                                "--steps", "1", "--threads", "1", "--out", str(out)]) == 0
    rows = {r["normalizer"]: r for r in read(out)}
    assert list(rows) == ["vanilla", "convnorm", "cayley"]
    for r in rows.values():
        phases = sum(float(r[f"{p}_ms"]) for p in profile_layers.PHASES)
        assert float(r["total_ms"]) == pytest.approx(phases, abs=0.02)
        assert r["command"].startswith("python -m benchmarks.profile_layers") and "--out" not in r["command"]
    assert float(rows["vanilla"]["fft_ms"]) == 0 and float(rows["vanilla"]["linalg_ms"]) == 0
    assert float(rows["convnorm"]["fft_ms"]) > 0 and float(rows["cayley"]["linalg_ms"]) > 0
    assert float(rows["vanilla"]["time_vs_vanilla"]) == 1.0
