"""Every shipped config is valid, and the paper-experiment configs say what they reproduce."""
from pathlib import Path

import pytest

from attacks import get_evaluator
from robustbench_convnorm import run
from robustbench_convnorm.config import expand_grid, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _placeholder_data(root: Path) -> Path:
    """Empty files where the shipped configs look for their data (the dry run
    checks that the files are there, it reads none)."""
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (root / "cifar-10-batches-py").mkdir(parents=True, exist_ok=True)
        (root / "cifar-10-batches-py" / name).write_bytes(b"")
    (root / "cifar10-jpeg").mkdir()
    for split in ("train", "test"):
        (root / "cifar10-jpeg" / f"{split}.zip").write_bytes(b"")
    return root


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_passes_dry_run(path, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_DATA", str(_placeholder_data(tmp_path / "data")))
    assert run.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "run(s):" in out and "data: " in out
    data_line = next(line for line in out.splitlines() if line.startswith("data: "))
    # the data is looked for where the variable points, never outside it
    assert "bundled" in data_line or str(tmp_path / "data") in data_line


@pytest.mark.parametrize("name", ["label_noise", "data_fraction", "eps_sweep"])
def test_paper_experiment_configs_say_what_they_reproduce_and_cost(name):
    """The header names the [CN] table, the published numbers' place and an estimate of GPU time."""
    path = CONFIGS[0].parent / f"{name}.yaml"
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert "[CN] Table" in header and "docs/paper_results.md" in header
    assert "estimate" in header and "GPU-hour" in header
    assert "../" not in path.read_text()  # nothing outside the project


def test_label_noise_and_data_fraction_grids_cover_the_papers_axes():
    noise = expand_grid(load_config(CONFIGS[0].parent / "label_noise.yaml"))
    assert sorted({s.config.data.label_noise for s in noise}) == [0.2, 0.4, 0.6, 0.8]
    assert {s.config.batchnorm for s in noise} == {False, True}
    assert all(s.config.train.method == "natural" and s.config.model.arch == "resnet18" for s in noise)
    fraction = expand_grid(load_config(CONFIGS[0].parent / "data_fraction.yaml"))
    assert sorted({s.config.data.train_fraction for s in fraction}) == [0.1, 0.3, 0.5, 0.7]
    assert {s.config.batchnorm for s in fraction} == {False, True}


def test_eps_sweep_re_evaluates_the_table1_runs():
    """Same run ids and output folder as pgd.yaml (so --eval-only finds the
    checkpoints), Table 1's evaluations kept, PGD-20 from 2/255 to 16/255."""
    table1 = load_config(CONFIGS[0].parent / "pgd.yaml")
    sweep = load_config(CONFIGS[0].parent / "eps_sweep.yaml")
    assert [s.run_id for s in expand_grid(sweep)] == [s.run_id for s in expand_grid(table1)]
    assert sweep.output_dir == table1.output_dir

    def names(cfg):
        return [get_evaluator(e["type"], **{k: v for k, v in e.items() if k != "type"}).name
                for e in cfg.eval.evaluators]

    assert set(names(table1)) <= set(names(sweep))
    pgd20 = [e for e in sweep.eval.evaluators if e["type"] == "pgd" and e["steps"] == 20]
    assert [round(e["eps"] * 255) for e in pgd20] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert all(abs(e["step"] - e["eps"] / 4) < 1e-12 for e in pgd20)
