"""CIFAR-10/100 in the standard python-pickle layout (what torchvision writes):

    ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    ROOT/cifar-100-python/{train, test, meta}

Missing files are downloaded through torchvision when it is installed and the
network allows; otherwise one error says where to put them.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .base import DataError, ImageData, register_source

_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "label_names", "labels", "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels",
                 "CIFAR100"),
}
DEFAULT_ROOT = "data"


def _unpickle(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _missing(folder: Path, files):
    return [f for f in files if not (folder / f).exists()]


def _try_download(name: str, root: Path) -> str:
    """Download with torchvision; return '' on success or why it failed."""
    try:
        import torchvision  # optional extra: pip install robustbench_convnorm[download]
    except Exception as err:  # ImportError, or a CUDA build that fails to import
        return f"torchvision is not importable ({err.__class__.__name__})"
    try:
        getattr(torchvision.datasets, _LAYOUT[name][6])(str(root), train=True, download=True)
        getattr(torchvision.datasets, _LAYOUT[name][6])(str(root), train=False, download=True)
    except Exception as err:
        return f"the download failed ({err.__class__.__name__}: {err})"
    return ""


def load_cifar(name: str, root, download: bool) -> ImageData:
    folder_name, train_files, test_files, meta_file, names_key, labels_key, _ = _LAYOUT[name]
    root = Path(root or DEFAULT_ROOT)
    folder = root / folder_name
    needed = train_files + test_files + [meta_file]
    missing = _missing(folder, needed)
    why = "download: false in the config"
    if missing and download:
        why = _try_download(name, root)
        missing = _missing(folder, needed)
    if missing:
        raise DataError(
            f"{name}: files missing under {folder}: {', '.join(missing)}. Put the python-pickle "
            f"version of {name.upper()} there (the folder {folder_name}/ from the official "
            f"tarball), or set data.root to where it is. Automatic download: {why or 'did not produce the files'}."
        )

    def read(files):
        xs, ys = [], []
        for f in files:
            d = _unpickle(folder / f)
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[labels_key], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    classes = list(_unpickle(folder / meta_file)[names_key])
    return ImageData(train_x, train_y, test_x, test_y, classes, name=name)


@register_source("cifar10")
def cifar10(root=None, download=True):
    return load_cifar("cifar10", root, download)


@register_source("cifar100")
def cifar100(root=None, download=True):
    return load_cifar("cifar100", root, download)
