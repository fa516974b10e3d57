"""The shipped paper configs train what the ConvNorm paper's code trains (the
normalizer and training settings), say so in their headers, and every
variant their headers offer is a working ``--set`` line."""
import re
from pathlib import Path

import pytest

from robustbench_convnorm.config import expand_grid, load_config, to_dict
from robustbench_convnorm.normalizers import get_normalizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _entries(cfg):
    return {entry.name: entry for entry in cfg.normalizers}


def _header(path):
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[:next(i for i, l in enumerate(lines) if not l.startswith("#"))])


def _variants(header):
    """The --set expressions of each variant, a backslash joining lines."""
    groups, current = [], []
    for line in header.splitlines():
        current += [a or b.rstrip("),.") for a, b in re.findall(r"--set\s+(?:'([^']*)'|(\S+))", line)]
        if current and not line.rstrip().endswith("\\"):
            groups.append(current)
            current = []
    return groups


def test_table1_config_is_the_papers_robust_training():
    cfg = load_config(CONFIGS / "pgd.yaml")
    assert cfg.train.method == "free" and cfg.batchnorm
    assert cfg.train.reset_delta is True  # the authors' loop zeroes delta for every minibatch
    entries = _entries(cfg)
    assert get_normalizer("ocnn", **entries["ocnn"].options).lam == 0.001  # their robust-training config
    assert get_normalizer("convnorm", **entries["convnorm"].options).affine_init == "conv_default"
    oni = get_normalizer("oni", **entries["oni"].options)
    assert (oni.T, oni.learnable_scale) == (3, True) and entries["oni"].overrides == {"train.lr": 0.01}
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.weight_decay, cfg.train.milestones) == (30, 0.1, 1e-4, [10, 20])


def test_table2_config_is_the_papers_natural_training():
    cfg = load_config(CONFIGS / "simba.yaml")
    assert cfg.train.method == "natural" and not cfg.batchnorm
    entries = _entries(cfg)
    assert get_normalizer("ocnn", **entries["ocnn"].options).lam == 0.01
    assert get_normalizer("convnorm", **entries["convnorm"].options).affine_init == "conv_default"
    oni = get_normalizer("oni", **entries["oni"].options)
    assert (oni.T, oni.learnable_scale) == (3, True)
    # The authors' standard-training config.
    assert (cfg.train.epochs, cfg.train.weight_decay, cfg.train.milestones) == (120, 1e-4, [40, 80])


@pytest.mark.parametrize("name,expected", [
    ("pgd.yaml", ["reset_delta", "lambda 0.001", "0.2023", "padding", "column form", "eps 1e-6"]),
    ("simba.yaml", ["BatchNorm", "lambda 0.01", "0.2023", "120 epochs"]),
])
def test_headers_state_the_settings_and_every_variant_works(name, expected):
    path = CONFIGS / name
    header = _header(path)
    for phrase in expected:
        assert phrase in header, phrase
    # The project's own words: nothing outside the project is pointed to.
    assert "REFERENCE" not in path.read_text() and "../shared" not in path.read_text()
    base = load_config(path)
    variants = _variants(header)
    assert len(variants) >= 3
    for overrides in variants:
        cfg = load_config(path, overrides)
        assert to_dict(cfg) != to_dict(base), overrides
        if not all(o.startswith("eval.") for o in overrides):  # what is trained changes: new run ids
            ids = {spec.run_id for spec in expand_grid(cfg)}
            assert ids != {spec.run_id for spec in expand_grid(base)}, overrides
