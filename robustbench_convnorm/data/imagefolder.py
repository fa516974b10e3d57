"""Images in ``<split>/<class>/<image>`` layout, from a directory or from zips
(ROOT/train.zip + ROOT/test.zip, or one zip holding both splits). This is how
the CIFAR-10 JPEG copy in ../shared/data/cifar10-jpeg is read. Decoded once
with Pillow, then cached as uint8 arrays (keyed by the files' size and mtime)."""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from .base import DataError, ImageData, register_source

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
DEFAULT_CACHE = Path(os.environ.get("ROBUSTBENCH_CONVNORM_CACHE", Path.home() / ".cache" / "robustbench_convnorm"))


def _members(root: Path, split: str) -> Tuple[List[Tuple[str, str]], callable, List[Path]]:
    """[(class, member)], a reader member -> bytes, and the files it depends on."""
    candidates = [root / f"{split}.zip", root] if root.is_dir() else [root]
    for cand in candidates:
        if cand.is_file() and cand.suffix == ".zip":
            zf = zipfile.ZipFile(cand)
            found = []
            for info in zf.infolist():
                parts = Path(info.filename).parts
                if info.is_dir() or not info.filename.lower().endswith(IMAGE_SUFFIXES):
                    continue
                # .../<split>/<class>/<image>
                if len(parts) >= 3 and parts[-3] == split:
                    found.append((parts[-2], info.filename))
            if found:
                return found, zf.read, [cand]
        elif cand.is_dir() and (cand / split).is_dir():
            found = [(p.parent.name, str(p)) for p in sorted((cand / split).glob("*/*"))
                     if p.suffix.lower() in IMAGE_SUFFIXES]
            if found:
                return found, lambda m: Path(m).read_bytes(), [cand / split]
    raise DataError(
        f"imagefolder: no '{split}' images under {root}. Expected {root}/{split}.zip or a directory "
        f"or zip holding {split}/<class>/<image>; set data.root to it."
    )


def _decode(members, read, classes: List[str], mode: str) -> Tuple[np.ndarray, np.ndarray]:
    index = {c: i for i, c in enumerate(classes)}
    members = sorted(members, key=lambda cm: (index[cm[0]], cm[1]))
    images, labels, shape = [], [], None
    for cls, member in members:
        with Image.open(io.BytesIO(read(member))) as img:
            arr = np.asarray(img.convert(mode), dtype=np.uint8)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise DataError(f"imagefolder: {member} is {arr.shape[1]}x{arr.shape[0]}, others are "
                            f"{shape[1]}x{shape[0]}; all images must have one size")
        images.append(arr)
        labels.append(index[cls])
    x = np.stack(images).transpose(0, 3, 1, 2).copy()
    return x, np.asarray(labels, dtype=np.int64)


def _cache_key(deps: List[Path], split: str, mode: str) -> str:
    h = hashlib.sha256(f"{split}:{mode}".encode())
    for d in deps:
        st = d.stat()
        h.update(f"{d.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _load_split(root: Path, split: str, classes: Optional[List[str]], mode: str, cache_dir: Optional[Path]):
    members, read, deps = _members(root, split)
    found_classes = sorted({c for c, _ in members})
    classes = classes or found_classes
    unknown = set(found_classes) - set(classes)
    if unknown:
        raise DataError(f"imagefolder: {split} has classes not in train: {sorted(unknown)}")
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"imagefolder-{_cache_key(deps, split, mode)}.npz"
        if path.exists():
            with np.load(path) as z:
                return z["x"], z["y"], classes
    x, y = _decode(members, read, classes, mode)
    if path is not None:
        # Atomic: a killed process never leaves a half-written cache behind.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
        os.close(fd)
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, path)
    return x, y, classes


@register_source("imagefolder")
def imagefolder(root=None, download=True, mode: str = "RGB", cache: bool = True,
                cache_dir: Optional[str] = None, name: str = "imagefolder", note: str = ""):
    if root is None:
        raise DataError("imagefolder: set data.root to a directory or .zip holding <split>/<class>/<image>")
    root = Path(root)
    if not root.exists():
        raise DataError(f"imagefolder: {root} does not exist; set data.root to the image folder or zips")
    cdir = Path(cache_dir) if cache_dir else (DEFAULT_CACHE if cache else None)
    if not cache:
        cdir = None
    train_x, train_y, classes = _load_split(root, "train", None, mode, cdir)
    test_x, test_y, _ = _load_split(root, "test", classes, mode, cdir)
    return ImageData(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
                     torch.from_numpy(test_y), classes, name=name, note=note)
