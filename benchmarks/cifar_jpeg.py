"""Where the CIFAR-10 JPEG copy is, and a tiny copy of it for rehearsals.

The copy is two zips, ``train.zip`` and ``test.zip``, in the image-folder
layout ``<split>/<class>/<image>.jpg`` that the ``imagefolder`` data source
reads (CIFAR-10 re-encoded as JPEG at quality 75; results on it are labelled
as that copy). The benchmarks look for it in the git-ignored ``.data/`` folder
of the checkout, where ``python -m benchmarks.gpu_prep`` puts it so that it
travels to a lent GPU machine with the checkout; ``--data DIR`` points
elsewhere.
"""
from __future__ import annotations

import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Dict, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
#: where the copy is looked for when no folder is given
DEFAULT = ROOT / ".data" / "cifar10-jpeg"
SPLITS = ("train", "test")
#: data.options of every run on this copy: results are labelled as the JPEG copy
OPTIONS = {"name": "cifar10-jpeg", "note": "CIFAR-10 as JPEG (quality 75), not the official pickled data"}


def has_zips(folder: Path) -> bool:
    return all((Path(folder) / f"{split}.zip").is_file() for split in SPLITS)


def find(folder: Optional[str] = None) -> Optional[Path]:
    """The folder holding train.zip and test.zip: ``folder`` if given (an error
    if it lacks them), else ``DEFAULT`` if it has them, else None."""
    if folder:
        path = Path(folder)
        if not has_zips(path):
            raise FileNotFoundError(f"{path} does not hold train.zip and test.zip of the CIFAR-10 JPEG copy")
        return path
    return DEFAULT if has_zips(DEFAULT) else None


def add_arguments(parser) -> None:
    """--data, --synthetic and --no-cache: the data options of every benchmark that trains on the copy."""
    parser.add_argument("--data", default=None, help="folder with train.zip and test.zip (default: .data/cifar10-jpeg)")
    parser.add_argument("--synthetic", action="store_true", help="generated images when no JPEG copy is found")
    parser.add_argument("--no-cache", action="store_true", help="do not cache the decoded images")


def from_args(args) -> Tuple[Optional[Path], Optional[str]]:
    """(the copy's folder, or None for generated images; an error message when
    there is no copy and --synthetic was not given)."""
    folder = find(args.data) if (args.data or not args.synthetic) else None
    if folder is None and not args.synthetic:
        return None, "no CIFAR-10 JPEG copy found: give --data DIR (or --synthetic for generated images)"
    return folder, None


def tiny_copy(source: Path, target: Path, per_class: Dict[str, int]) -> Path:
    """Zips with the first ``per_class[split]`` images of each class of each
    split (stored, like the originals): real JPEGs in the real layout, few
    enough that a CPU rehearsal decodes them in a moment."""
    target.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        taken = defaultdict(int)
        with zipfile.ZipFile(Path(source) / f"{split}.zip") as src, \
                zipfile.ZipFile(target / f"{split}.zip", "w", zipfile.ZIP_STORED) as dst:
            for info in sorted(src.infolist(), key=lambda i: i.filename):
                parts = Path(info.filename).parts
                if info.is_dir() or len(parts) < 3 or parts[-3] != split:
                    continue
                if taken[parts[-2]] < per_class[split]:
                    taken[parts[-2]] += 1
                    dst.writestr(info.filename, src.read(info))
    return target


def evaluated_subset(source: Path, target: Path, n_examples: int, seed: int = 0) -> Path:
    """``target``/test.zip holding only the ``n_examples`` test images an
    evaluation with ``eval.n_examples: n_examples`` and ``eval.seed: seed``
    picks from ``source``/test.zip (the protocol's seeded permutation of the
    images in the image-folder order: class, then name), in the same order.
    An evaluation of every image of the subset is then one of those same
    images; only SimBA's walk for correctly classified images (its order is a
    permutation of the subset) may pick others."""
    from attacks._selection import evaluation_order

    with zipfile.ZipFile(Path(source) / "test.zip") as src:
        members = [info for info in src.infolist()
                   if not info.is_dir() and len(Path(info.filename).parts) >= 3
                   and Path(info.filename).parts[-3] == "test"]
        classes = sorted({Path(i.filename).parts[-2] for i in members})
        members.sort(key=lambda i: (classes.index(Path(i.filename).parts[-2]), i.filename))
        if n_examples > len(members):
            raise ValueError(f"{source}/test.zip holds {len(members)} test images, fewer than {n_examples}")
        _, picked = evaluation_order(len(members), n_examples, seed)
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / "test.zip.partial"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as dst:
            for k in picked:
                dst.writestr(members[k], src.read(members[k]))
    tmp.replace(target / "test.zip")
    return target / "test.zip"


def data_section(data: Optional[Path], train_fraction: float = 1.0, cache: bool = True) -> Dict:
    """The config's data section: the JPEG copy in ``data`` (a class-stratified
    ``train_fraction`` of its training images), or, when ``data`` is None,
    512 generated 32x32 images of 10 classes (times ``train_fraction``)."""
    augment = {"crop_padding": 4, "flip": True}
    if data is None:
        return {"source": "synthetic", "augment": augment,
                "options": {"n_train": max(10, round(512 * train_fraction)), "n_test": 256, "num_classes": 10,
                            "size": 32}}
    section = {"source": "imagefolder", "root": str(data), "options": {**OPTIONS, "cache": cache},
               "augment": augment}
    if train_fraction < 1.0:
        section["train_fraction"] = train_fraction
    return section
