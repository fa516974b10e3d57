"""Shared by the tests/test_integrity_*.py files: a tiny config that trains in
about a second, and ways to run the CLI in this process or in another."""
import shutil
from pathlib import Path

import torch

import cli_util
from cli_util import ROOT, cli, env, records  # noqa: F401  (the integrity tests import them from here)

TINY = {
    "data": {"source": "synthetic", "options": {"n_train": 96, "n_test": 48, "size": 8, "num_classes": 4},
             "augment": {"crop_padding": 1, "flip": True}},
    "model": {"arch": "convnet", "width": 0.5},
    "normalizers": [{"name": "vanilla"}],
    "train": {"method": "free", "epochs": 2, "batch_size": 32, "lr": 0.05, "replays": 1, "schedule": "cosine",
              "val_examples": 16, "val_pgd_steps": 1},
    "eval": {"batch_size": 48, "lipschitz": False,
             "evaluators": [{"type": "clean"}, {"type": "pgd", "eps": "8/255", "step": "2/255", "steps": 2}]},
    "seeds": [0],
    "device": "cpu",
}


def write_config(tmp_path, out, **changes):
    """TINY with ``section__key=value`` (or ``section=value``) changes, writing to tmp_path/out."""
    return cli_util.write_config(tmp_path / f"{out}.yaml", tmp_path / out, TINY, **changes)


def private_copy(trained, tmp_path):
    """A copy of a module's trained output folder in this test's tmp_path, and the
    run CLI pointed at it: ``(cli(*args) -> exit code, folder)``."""
    from robustbench_convnorm import run

    cfg, out = trained
    mine = tmp_path / "out"
    shutil.copytree(out, mine)
    return (lambda *args: run.main([str(cfg), "--set", f"output_dir={mine}", *args])), mine


def run_dirs(out_dir):
    return sorted(p for p in (Path(out_dir) / "runs").iterdir() if p.is_dir())


def flip_bit_in(path, tensor: torch.Tensor, byte: int = 3, bit: int = 6) -> None:
    """Flip one bit of ``tensor``'s first element where it is stored in ``path``
    (torch stores tensors uncompressed): an exponent bit of a float32."""
    data = bytearray(Path(path).read_bytes())
    raw = tensor.detach().contiguous().cpu().numpy().tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0, "the tensor's bytes are not found once in the file"
    data[at + byte] ^= 1 << bit
    Path(path).write_bytes(bytes(data))


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
