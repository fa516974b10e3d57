"""Images in ``<split>/<class>/<image>`` layout, from a directory or from zips
(ROOT/train.zip + ROOT/test.zip, or one zip holding both splits). This is how
the CIFAR-10 JPEG copy beside the project is read. Decoded once with Pillow,
then cached as uint8 arrays.

The cache key covers every image the split is read from: for a directory the
path, size and mtime of each file; for a zip its size, mtime and a hash of its
central directory (each member's name, CRC and size). Editing, replacing,
adding or removing an image therefore reads the images again. A cache file
that cannot be read is deleted, named in a warning, and rebuilt. ``__MACOSX/``
folders and dotfiles (``.DS_Store``, ``._x.png``) are not images and are
skipped; an image that does not decode is named (zip and member, or path).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from .. import atomic
from .base import DataError, ImageData, register_source
from .location import HOW_TO_SET

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
DEFAULT_CACHE = Path(os.environ.get("ROBUSTBENCH_CONVNORM_CACHE", Path.home() / ".cache" / "robustbench_convnorm"))
#: bump when the cached arrays' meaning changes
_CACHE_VERSION = 2
_log = logging.getLogger(__name__)


def _ignored(parts) -> bool:
    """macOS metadata and hidden files are never images."""
    return any(p == "__MACOSX" or p.startswith(".") for p in parts)


class _Split:
    """One split's images: ``members`` [(class, member)], ``read(member)`` ->
    bytes, ``where(member)`` -> how an error names it, ``fingerprint`` -> what
    the cache key hashes."""

    def __init__(self, members: List[Tuple[str, str]], read: Callable[[str], bytes],
                 where: Callable[[str], str], fingerprint: str, close: Callable[[], None] = lambda: None):
        self.members, self.read, self.where, self.fingerprint, self.close = members, read, where, fingerprint, close


def _zip_split(path: Path, split: str) -> Optional[_Split]:
    try:
        zf = zipfile.ZipFile(path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"imagefolder: {path} is not a readable zip ({err}); replace it") from None
    except UnicodeDecodeError:  # a member flagged UTF-8 whose name is not
        raise DataError(f"imagefolder: {path} names a member in bytes that are not UTF-8 although the zip "
                        f"says they are; re-create the zip with UTF-8 names") from None
    found = []
    for info in infos:
        parts = Path(info.filename).parts
        if info.is_dir() or _ignored(parts) or not info.filename.lower().endswith(IMAGE_SUFFIXES):
            continue
        if len(parts) >= 3 and parts[-3] == split:  # .../<split>/<class>/<image>
            found.append((parts[-2], info.filename))
    if not found:
        zf.close()
        return None
    st = path.stat()
    directory = hashlib.sha256()
    for info in sorted(infos, key=lambda i: i.filename):
        directory.update(f"{info.filename}\0{info.CRC}\0{info.file_size}\n".encode())
    fingerprint = f"zip:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{directory.hexdigest()}"
    return _Split(found, zf.read, lambda m: f"{path}:{m}", fingerprint, zf.close)


def _shown(path) -> str:
    """A path as text, undecodable bytes written as \\xff escapes."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _check_utf8(path: Path, parts) -> None:
    """Names become labels, cache keys and record fields: they must be text."""
    for part in parts:
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"imagefolder: {_shown(path)}: the name '{_shown(part)}' is not UTF-8 text; rename "
                            f"it (class folders and image files need UTF-8 names)") from None


def _dir_split(folder: Path) -> Optional[_Split]:
    found, stats = [], hashlib.sha256()
    for p in sorted(folder.glob("*/*")):
        rel = p.relative_to(folder).parts
        if _ignored(rel) or p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        _check_utf8(p, rel)
        st = p.stat()
        stats.update(f"{'/'.join(rel)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        found.append((p.parent.name, str(p)))
    if not found:
        return None
    return _Split(found, lambda m: Path(m).read_bytes(), str, f"dir:{folder.resolve()}:{stats.hexdigest()}")


def _open_split(root: Path, split: str) -> _Split:
    candidates = [root / f"{split}.zip", root] if root.is_dir() else [root]
    for cand in candidates:
        found = None
        if cand.is_file() and cand.suffix == ".zip":
            found = _zip_split(cand, split)
        elif cand.is_dir() and (cand / split).is_dir():
            found = _dir_split(cand / split)
        if found is not None:
            return found
    raise DataError(
        f"imagefolder: no '{split}' images under {root}. Expected {root}/{split}.zip or a directory "
        f"or zip holding {split}/<class>/<image>; set data.root to it."
    )


def _decode(split: _Split, classes: List[str], mode: str) -> Tuple[np.ndarray, np.ndarray]:
    index = {c: i for i, c in enumerate(classes)}
    members = sorted(split.members, key=lambda cm: (index[cm[0]], cm[1]))
    images, labels, shape = [], [], None
    for cls, member in members:
        try:
            with Image.open(io.BytesIO(split.read(member))) as img:
                arr = np.asarray(img.convert(mode), dtype=np.uint8)
        except Exception as err:  # Pillow and zipfile report damage as many types
            raise DataError(f"imagefolder: cannot decode {split.where(member)} ({err.__class__.__name__}: "
                            f"{err}); delete or replace that file") from None
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise DataError(f"imagefolder: {split.where(member)} is {arr.shape[1]}x{arr.shape[0]}, others are "
                            f"{shape[1]}x{shape[0]}; all images must have one size")
        images.append(arr)
        labels.append(index[cls])
    x = np.stack(images).transpose(0, 3, 1, 2).copy()
    return x, np.asarray(labels, dtype=np.int64)


def _cache_key(split: _Split, name: str, mode: str, classes: List[str]) -> str:
    # the classes fix the labels: a class added to train renumbers test's labels
    h = hashlib.sha256(f"v{_CACHE_VERSION}:{name}:{mode}:{classes}:{split.fingerprint}".encode())
    return h.hexdigest()[:16]


def _read_cache(path: Path, n: int):
    """(x, y) from a cache file, or None (deleted, with a warning) when it cannot be used."""
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
        if x.dtype != np.uint8 or x.ndim != 4 or y.shape != (n,) or len(x) != n:
            raise ValueError(f"holds arrays {x.dtype} {x.shape} and {y.shape} for {n} images")
        return x, y
    except Exception as err:  # BadZipFile, EOFError, KeyError, ValueError, OSError...
        _log.warning(f"imagefolder: the cache file {path} is unreadable ({err.__class__.__name__}: {err}); "
                     f"deleted, the images are decoded again")
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return None


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    atomic.remove_orphan_temps(path.parent)  # a killed decode leaves a large temporary file

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, x=x, y=y)
    atomic.atomic_write(path, write)


def _load_split(root: Path, split: str, classes: Optional[List[str]], mode: str, cache_dir: Optional[Path]):
    images = _open_split(root, split)
    try:
        found_classes = sorted({c for c, _ in images.members})
        if classes is None and len(found_classes) < 2:
            raise DataError(f"imagefolder: {root} has {len(found_classes)} class folder(s) under {split}/ "
                            f"({', '.join(found_classes)}); a classifier needs at least two")
        classes = classes or found_classes
        unknown = set(found_classes) - set(classes)
        if unknown:
            raise DataError(f"imagefolder: {split} has classes not in train: {sorted(unknown)}")
        missing = set(classes) - set(found_classes)
        if missing:
            raise DataError(f"imagefolder: {split} has no images of {sorted(missing)}, which train has; "
                            f"every class needs test images (or remove it from train)")
        path = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"imagefolder-{_cache_key(images, split, mode, classes)}.npz"
            if path.exists():
                cached = _read_cache(path, len(images.members))
                if cached is not None:
                    return cached[0], cached[1], classes
        x, y = _decode(images, classes, mode)
        if path is not None:
            _write_cache(path, x, y)
        return x, y, classes
    finally:
        images.close()


def locate(root=None, download=True, **options) -> str:
    """Whether ``root`` holds both splits, as zips or folders (without reading
    an image); else a DataError naming what is missing."""
    if root is None:
        raise DataError(f"imagefolder: data.root is not set; set it to a directory or .zip holding "
                        f"<split>/<class>/<image> ({HOW_TO_SET})")
    root = Path(root)
    if not root.exists():
        raise DataError(f"imagefolder: {root} does not exist; {HOW_TO_SET}")
    if root.is_file():
        if root.suffix != ".zip":
            raise DataError(f"imagefolder: {root} is a file but not a .zip; point data.root to the folder or zip")
        return f"imagefolder in {root}"
    missing = [f"{split}.zip (or {split}/)" for split in ("train", "test")
               if not ((root / f"{split}.zip").is_file() or (root / split).is_dir())]
    if missing:
        raise DataError(f"imagefolder: {root} has no {' and no '.join(missing)}; {HOW_TO_SET}")
    return f"{options.get('name', 'imagefolder')} in {root}"


@register_source("imagefolder")
def imagefolder(root=None, download=True, mode: str = "RGB", cache: bool = True,
                cache_dir: Optional[str] = None, name: str = "imagefolder", note: str = ""):
    """Images in <split>/<class>/<image> layout, from a folder or from zips (ROOT/train.zip, ROOT/test.zip)."""
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


imagefolder.locate = locate
