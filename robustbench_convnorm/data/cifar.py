"""CIFAR-10/100 in the standard python-pickle layout (what torchvision writes):

    ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    ROOT/cifar-100-python/{train, test, meta}

Missing files are downloaded through torchvision when it is installed and the
network allows; otherwise one error says where to put them.

The files are pickles, and a pickle can name any Python callable to run while
it is read. They are read with an unpickler that admits only what these files
hold (dicts, lists, strings and numpy arrays), so a crafted file is refused,
named, and never runs code.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .base import DataError, ImageData, register_source
from .location import DEFAULT_DATA_ROOT, HOW_TO_SET, expand_root

_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "label_names", "labels", "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels",
                 "CIFAR100"),
}
#: no data.root: $ROBUSTBENCH_DATA, else data/ under the working directory (location.py)
DEFAULT_ROOT = DEFAULT_DATA_ROOT


#: the globals a CIFAR batch pickle refers to: numpy's array and scalar
#: reconstruction (old and numpy-2 module names) and the codec protocol 2 uses for bytes
_ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class _Refused(pickle.UnpicklingError):
    pass


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def _unpickle(path: Path, what: str = "cifar"):
    """A CIFAR pickle, read without running anything it names (see above)."""
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="latin1").load()
    except _Refused as err:
        raise DataError(f"{what}: {path} refers to {err}, which a CIFAR file never holds; it was not read "
                        f"(it may be crafted to run code). Replace it with the file from the official "
                        f"tarball") from None
    except Exception as err:  # EOFError, UnpicklingError, ValueError... from a damaged file
        raise DataError(f"{what}: {path} cannot be read ({err.__class__.__name__}: {err}); it is truncated "
                        f"or damaged: replace it with the file from the official tarball") from None
    if not isinstance(obj, dict):
        raise DataError(f"{what}: {path} holds a {type(obj).__name__}, not the dict of a CIFAR file; replace it")
    return obj


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


def _missing_message(name: str, folder: Path, missing, why: str) -> str:
    folder_name = _LAYOUT[name][0]
    return (f"{name}: files missing under {folder}: {', '.join(missing)}. Put the python-pickle version of "
            f"{name.upper()} there (the folder {folder_name}/ from the official tarball), or {HOW_TO_SET} "
            f"(the folder holding {folder_name}/). Automatic download: {why}.")


def _root(root) -> Path:
    return Path(root or expand_root(DEFAULT_ROOT))


def locate_cifar(name: str, root, download: bool) -> str:
    """Where the files are, or that torchvision can download them; else a
    DataError naming the missing files (nothing is read or downloaded)."""
    folder_name, train_files, test_files, meta_file = _LAYOUT[name][:4]
    folder = _root(root) / folder_name
    missing = _missing(folder, train_files + test_files + [meta_file])
    if not missing:
        return f"{name} in {folder}"
    if not download:
        raise DataError(_missing_message(name, folder, missing, "off (download: false in the config)"))
    try:
        import torchvision  # noqa: F401  (optional extra: pip install robustbench_convnorm[download])
    except Exception as err:  # ImportError, or a CUDA build that fails to import
        raise DataError(_missing_message(name, folder, missing, f"impossible, torchvision is not importable "
                                                                f"({err.__class__.__name__})")) from None
    return f"{name}: not in {folder} yet; torchvision downloads it there at the first run"


def load_cifar(name: str, root, download: bool) -> ImageData:
    folder_name, train_files, test_files, meta_file, names_key, labels_key, _ = _LAYOUT[name]
    root = _root(root)
    folder = root / folder_name
    needed = train_files + test_files + [meta_file]
    missing = _missing(folder, needed)
    why = "off (download: false in the config)"
    if missing and download:
        why = _try_download(name, root)
        missing = _missing(folder, needed)
    if missing:
        raise DataError(_missing_message(name, folder, missing, why or "did not produce the files"))

    def field(d, key, path):
        if key not in d:
            raise DataError(f"{name}: {path} has no '{key}' entry; it is not a {name.upper()} file: replace it")
        return d[key]

    def read(files):
        xs, ys = [], []
        for f in files:
            d = _unpickle(folder / f, name)
            try:
                xs.append(np.asarray(field(d, "data", folder / f), dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(field(d, labels_key, folder / f), dtype=np.int64))
            except (TypeError, ValueError) as err:
                raise DataError(f"{name}: {folder / f} does not hold 32x32 RGB images and labels ({err}); "
                                f"replace it") from None
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    classes = [str(c) for c in field(_unpickle(folder / meta_file, name), names_key, folder / meta_file)]
    return ImageData(train_x, train_y, test_x, test_y, classes, name=name)


@register_source("cifar10")
def cifar10(root=None, download=True):
    """CIFAR-10 in the python-pickle layout (ROOT/cifar-10-batches-py/); downloads through torchvision when allowed."""
    return load_cifar("cifar10", root, download)


@register_source("cifar100")
def cifar100(root=None, download=True):
    """CIFAR-100 in the python-pickle layout (ROOT/cifar-100-python/); downloads through torchvision when allowed."""
    return load_cifar("cifar100", root, download)


cifar10.locate = lambda root=None, download=True: locate_cifar("cifar10", root, download)
cifar100.locate = lambda root=None, download=True: locate_cifar("cifar100", root, download)
