"""Shared by the tests/test_integrity_*.py files: a tiny config that trains in
about a second, and ways to run the CLI in this process or in another."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

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
    raw = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        if leaf:
            raw[section][leaf] = value
        else:
            raw[section] = value
    raw["output_dir"] = str(tmp_path / out)
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def records(out_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("runs/*/record.json"))}


def run_dirs(out_dir):
    return sorted(p for p in (Path(out_dir) / "runs").iterdir() if p.is_dir())


def env(**extra):
    """The environment of a child process: this checkout first on the path, one thread."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            **{k: str(v) for k, v in extra.items()}}


def cli(*args, timeout=600, **extra_env):
    return subprocess.run([sys.executable, "-m", "robustbench_convnorm.run", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=env(**extra_env), timeout=timeout)


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
