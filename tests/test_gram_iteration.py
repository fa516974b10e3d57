"""Gram iteration (lipschitz/gram.py): an upper bound of the exact circular
norm for every number of iterations, converging to it on random kernels
(within 1e-3 relative after the default iterations)."""
import pytest
import torch

from robustbench_convnorm.lipschitz.gram import GRAM_ITERS, gram_iteration_bound, matrix_gram_bound
from robustbench_convnorm.lipschitz.spectra import circular_spectral_norm

DT = torch.float64


@pytest.mark.parametrize("c_out,c_in,k,n,stride,groups", [
    (8, 6, 3, 16, 1, 1), (6, 8, 3, 8, 2, 1), (4, 4, 5, 6, 1, 1), (16, 16, 3, 8, 1, 1), (8, 4, 3, 8, 1, 2),
    (3, 3, 1, 4, 1, 1)])
def test_gram_bound_is_above_the_exact_norm_and_converges_to_it(c_out, c_in, k, n, stride, groups):
    gen = torch.Generator().manual_seed(c_out * 100 + c_in * 10 + k)
    for _ in range(3):
        w = torch.randn(c_out, c_in // groups, k, k, generator=gen, dtype=DT)
        exact = circular_spectral_norm(w, n, stride, groups)
        previous = float("inf")
        for t in (0, 1, 2, 4, 8):
            b = gram_iteration_bound(w, n, stride, groups, n_iter=t)
            assert exact <= b * (1 + 1e-12)
            assert b <= previous * (1 + 1e-12)       # each squaring tightens it
            previous = b
        final = gram_iteration_bound(w, n, stride, groups)
        assert exact <= final * (1 + 1e-12) and final <= exact * (1 + 1e-3)


def test_equal_top_singular_values_are_the_slowest_case_and_still_within_tolerance():
    # an orthogonal matrix: every singular value 1, the bound is rank^(1/2^(T+1))
    q = torch.linalg.qr(torch.randn(64, 64, dtype=DT)).Q
    b = float(matrix_gram_bound(q, GRAM_ITERS))
    assert 1.0 <= b <= 64 ** (1 / 2 ** (GRAM_ITERS + 1)) * (1 + 1e-12)
    assert b - 1 < 1e-3


def test_huge_and_zero_kernels_neither_overflow_nor_divide_by_zero():
    w = torch.randn(4, 3, 3, 3, dtype=DT)
    exact = circular_spectral_norm(w, 8)
    assert gram_iteration_bound(w * 1e150, 8) == pytest.approx(exact * 1e150, rel=1e-3)
    assert gram_iteration_bound(torch.zeros(2, 2, 3, 3, dtype=DT), 8) == 0.0


@pytest.mark.parametrize("normalizer", ["vanilla", "convnorm", "cayley"])
def test_the_report_panel_holds_gram_ratios_times_and_the_sound_layer_bound(normalizer):
    from robustbench_convnorm.lipschitz import model_report
    from robustbench_convnorm.models import build_model
    from robustbench_convnorm.normalizers import get_normalizer

    model = build_model("convnet", get_normalizer(normalizer), num_classes=4, in_channels=3, mean=[0.5] * 3,
                        std=[0.25] * 3, batchnorm=False, width=0.125)
    report = model_report(model, (3, 8, 8), power_iters=50, tn_iters=20, tn_restarts=1, tn_rounds=1)
    for row in report["layers"]:
        # the sound bound of the layer as computed is above its power-iteration norm, whatever the normalizer
        assert row["layer_bound"] is not None and row["spectral_norm"] <= row["layer_bound"] * (1 + 1e-5)
        if row["f4_bound"] is not None:    # (a Cayley layer with a stride has no kernel of its geometry)
            assert row["seconds_f4"] is not None and row["seconds_tn"] is not None
        if row["exact_circular"] is not None:
            assert row["exact_circular"] <= row["gram_bound"] * (1 + 1e-9)
            assert 1 - 1e-9 <= row["gram_ratio"] <= 1 + 1e-3
            assert row["f4_ratio"] >= 1 - 1e-9 and row["seconds_gram"] is not None
    assert report["lip_network_log10"] is not None and report["network"]["sound"]
    assert report["soundness"]["tn_bound"].startswith("estimate")      # the record says what is sound


def test_the_bound_benchmark_writes_rows_where_every_sound_method_is_above_the_layer(tmp_path):
    from benchmarks import bounds
    from benchmarks.common import read_rows

    out = tmp_path / "b.csv"
    assert bounds.main(["--sizes", "5", "--channels", "3", "--base", "3", "5", "--ref-iters", "300",
                        "--repeats", "1", "--no-memory", "--no-figure", "--tn-restarts", "1", "--out", str(out)]) == 0
    rows = read_rows(out)
    assert {r["method"] for r in rows} == set(bounds.METHODS)
    for r in rows:
        assert r["command"].startswith("python -m benchmarks.bounds") and r["device_name"]
        if r["sound"] == "yes":   # padded circular, Gram, F4: above power iteration on the layer
            assert float(r["value"]) >= float(r["reference"]) * (1 - 1e-6), r
