"""Data is never stale and never runs code: the image cache follows every
image file (and rebuilds a damaged cache, saying so); CIFAR pickles cannot
execute anything; an undecodable image is named; macOS metadata and dotfiles
are skipped; a data set that cannot make a fair benchmark is refused."""
import logging
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from data_util import fake_cifar10, zip_splits
from robustbench_convnorm.data import DataError, load_source


def _image(path, seed, size=(5, 4), fmt=None):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def _folder(root, n=2, classes=("a", "b"), fmt="PNG", suffix=".png"):
    for s, split in enumerate(("train", "test")):
        for c, cls in enumerate(classes):
            for i in range(n):
                _image(root / split / cls / f"{i:04d}{suffix}", seed=100 * s + 10 * c + i, fmt=fmt)
    return root


def _load(root, cache):
    return load_source("imagefolder", root=str(root), cache_dir=str(cache))


def test_editing_replacing_or_adding_an_image_is_never_served_from_the_cache(tmp_path):
    root, cache = _folder(tmp_path / "imgs"), tmp_path / "cache"
    first = _load(root, cache)
    edited = _image(root / "train" / "a" / "0000.png", seed=7)          # edited in place
    now = _load(root, cache)
    assert np.array_equal(now.train_x[0].permute(1, 2, 0).numpy(), edited)
    replacement = tmp_path / "elsewhere.png"
    replaced = _image(replacement, seed=8)
    os.replace(replacement, root / "test" / "b" / "0001.png")          # replaced by another file
    now = _load(root, cache)
    assert np.array_equal(now.test_x[3].permute(1, 2, 0).numpy(), replaced)
    _image(root / "train" / "b" / "0002.png", seed=9)                  # added
    now = _load(root, cache)
    assert len(now.train_y) == len(first.train_y) + 1 and now.train_y.tolist() == [0, 0, 1, 1, 1]
    cached = sorted(cache.glob("*.npz"))
    again = _load(root, cache)                                         # unchanged: served from the cache
    assert torch.equal(again.train_x, now.train_x) and sorted(cache.glob("*.npz")) == cached


def test_a_zip_member_changed_behind_the_same_size_and_mtime_is_seen(tmp_path):
    # BMPs of one size are byte-for-byte the same length: only the member's CRC tells them apart
    src = _folder(tmp_path / "src", fmt="BMP", suffix=".bmp")
    zips, cache = tmp_path / "zips", tmp_path / "cache"

    def pack():
        zip_splits(src, zips, "*.bmp", date_time=(2020, 1, 1, 0, 0, 0))
    pack()
    st = (zips / "train.zip").stat()
    _load(zips, cache)
    new = _image(src / "train" / "a" / "0001.bmp", seed=11, fmt="BMP")
    pack()
    os.utime(zips / "train.zip", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (zips / "train.zip").stat().st_size == st.st_size
    now = _load(zips, cache)
    assert np.array_equal(now.train_x[1].permute(1, 2, 0).numpy(), new)


def test_a_damaged_cache_file_is_deleted_rebuilt_and_named(tmp_path, caplog):
    root, cache = _folder(tmp_path / "imgs"), tmp_path / "cache"
    good = _load(root, cache)
    cached = sorted(cache.glob("*.npz"))
    assert cached
    for damaged in cached:
        damaged.write_bytes(b"PK\x03\x04 not really a zip")
    with caplog.at_level(logging.WARNING):
        again = _load(root, cache)
    assert torch.equal(again.train_x, good.train_x) and torch.equal(again.test_y, good.test_y)
    assert str(damaged) in caplog.text and "unreadable" in caplog.text
    assert sorted(cache.glob("*.npz")) == cached                        # rebuilt under the same key
    for path in cached:
        with np.load(path) as z:                                       # rebuilt whole
            assert z["x"].dtype == np.uint8


class _Payload:
    """What a crafted pickle does: call something while being read."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_crafted_cifar_batch_runs_no_code(tmp_path):
    marker = tmp_path / "the-payload-ran"
    folder = fake_cifar10(tmp_path / "root", batch_1=pickle.dumps({"data": _Payload(marker), "labels": [0]}))
    with pytest.raises(DataError) as err:
        load_source("cifar10", root=str(tmp_path / "root"), download=False)
    assert not marker.exists()
    assert str(folder / "data_batch_1") in str(err.value) and "mkdir" in str(err.value)


def test_every_cifar_pickle_layout_is_still_read(tmp_path):
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        root = tmp_path / f"p{protocol}"
        folder = fake_cifar10(root)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            with open(folder / name, "rb") as f:
                d = pickle.load(f)
            with open(folder / name, "wb") as f:
                pickle.dump(d, f, protocol=protocol)
        data = load_source("cifar10", root=str(root), download=False)
        assert data.train_x.shape == (50, 3, 32, 32)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:100])
    with pytest.raises(DataError, match=f"{folder / 'test_batch'} cannot be read .* truncated"):
        load_source("cifar10", root=str(root), download=False)


def test_an_undecodable_image_is_named(tmp_path):
    root = _folder(tmp_path / "imgs")
    bad = root / "train" / "b" / "0001.png"
    bad.write_bytes(bad.read_bytes()[:40])                             # truncated
    with pytest.raises(DataError, match=f"cannot decode {bad} .*delete or replace"):
        load_source("imagefolder", root=str(root), cache=False)
    zips = zip_splits(root, tmp_path / "zips")
    with pytest.raises(DataError, match=f"cannot decode {zips / 'train.zip'}:train/b/0001.png"):
        load_source("imagefolder", root=str(zips), cache=False)


def test_macos_metadata_and_dotfiles_are_not_images(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "train" / "a" / "._0000.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "train" / "a" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "train" / ".hidden").mkdir()
    _image(root / "train" / ".hidden" / "x.png", seed=1)
    folder = load_source("imagefolder", root=str(root), cache=False)
    assert folder.classes == ["a", "b"] and len(folder.train_y) == 4
    zips = zip_splits(root, tmp_path / "zips", skip_dotfiles=True)
    for split in ("train", "test"):
        with zipfile.ZipFile(zips / f"{split}.zip", "a") as zf:
            zf.writestr(f"__MACOSX/{split}/a/._0000.png", b"\x00\x05\x16\x07AppleDouble")
    zipped = load_source("imagefolder", root=str(zips), cache=False)
    assert torch.equal(zipped.train_x, folder.train_x)


def test_too_few_classes_or_a_test_split_missing_one_is_refused(tmp_path):
    with pytest.raises(DataError, match="1 class folder.*at least two"):
        load_source("imagefolder", root=str(_folder(tmp_path / "one", classes=("a",))), cache=False)
    root = _folder(tmp_path / "gap", classes=("a", "b", "c"))
    for p in (root / "test" / "c").iterdir():
        p.unlink()
    (root / "test" / "c").rmdir()
    with pytest.raises(DataError, match=r"test has no images of \['c'\], which train has"):
        load_source("imagefolder", root=str(root), cache=False)
    with pytest.raises(DataError, match="at least two"):
        load_source("synthetic", num_classes=1)
    with pytest.raises(DataError, match=r"the test split has no example of class\(es\) \['class3'\]"):
        load_source("synthetic", num_classes=4, n_test=3)
