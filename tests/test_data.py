import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from data_util import fake_cifar10, zip_splits
from robustbench_convnorm.config import DataConfig
from robustbench_convnorm.data import (DataError, DeviceBatches, load_source, prepare_data, random_crop_flip,
                                       stratified_subset, symmetric_label_noise)


def test_digits_is_real_and_deterministic():
    a, b = load_source("digits"), load_source("digits")
    assert a.train_x.shape == (1437, 1, 8, 8) and a.test_x.shape == (360, 1, 8, 8)
    assert a.train_x.dtype == torch.uint8 and a.train_x.max() == 255
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert set(a.train_y.tolist()) == set(range(10))


def test_synthetic_shapes():
    d = load_source("synthetic", n_train=40, n_test=20, num_classes=5, size=8, channels=2)
    assert d.train_x.shape == (40, 2, 8, 8) and d.num_classes == 5


def _write_images(root, split, classes, n, size=(5, 4)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / split / c / f"{i:04d}.png")


def test_imagefolder_directory_and_zip_agree(tmp_path):
    folder = tmp_path / "folder"
    _write_images(folder, "train", ["b_cls", "a_cls"], 3)
    _write_images(folder, "test", ["a_cls", "b_cls"], 2)
    d = load_source("imagefolder", root=str(folder), cache=False)
    assert d.classes == ["a_cls", "b_cls"]              # sorted folder order = label order
    assert d.train_x.shape == (6, 3, 4, 5)              # (N, C, H, W)
    assert d.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    png = Image.open(folder / "train" / "b_cls" / "0001.png")
    assert np.array_equal(d.train_x[4].permute(1, 2, 0).numpy(), np.asarray(png))
    zips = zip_splits(folder, tmp_path / "zips")
    cache = tmp_path / "cache"
    z1 = load_source("imagefolder", root=str(zips), cache_dir=str(cache))
    z2 = load_source("imagefolder", root=str(zips), cache_dir=str(cache))   # from the cache
    assert len(list(cache.glob("*.npz"))) == 2
    for z in (z1, z2):
        assert torch.equal(z.train_x, d.train_x) and torch.equal(z.test_y, d.test_y)


def test_imagefolder_missing_split_says_where(tmp_path):
    _write_images(tmp_path, "train", ["a", "b"], 1)
    with pytest.raises(DataError, match=r"no 'test' images under .*set data.root"):
        load_source("imagefolder", root=str(tmp_path), cache=False)
    with pytest.raises(DataError, match="set data.root"):
        load_source("imagefolder")


def test_cifar10_pickle_layout(tmp_path):
    folder = fake_cifar10(tmp_path)
    d = load_source("cifar10", root=str(tmp_path), download=False)
    assert d.train_x.shape == (50, 3, 32, 32) and d.test_x.shape == (10, 3, 32, 32)
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)
    # the pickle stores each image as 1024 R, then G, then B values, row-major
    assert np.array_equal(d.test_x[2].numpy().reshape(-1), raw["data"][2])
    assert d.classes[3] == "c3"


def test_cifar_missing_without_network_says_where(tmp_path, monkeypatch):
    # torchvision absent (or unusable) and no network: one message with the folder to fill
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(DataError) as err:
        load_source("cifar10", root=str(tmp_path), download=True)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "data_batch_1" in msg
    assert "torchvision is not importable" in msg
    with pytest.raises(DataError, match="cifar-100-python"):
        load_source("cifar100", root=str(tmp_path), download=False)


def test_crop_flip_are_shifted_windows():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 2, 6, 7)
    out = random_crop_flip(x, padding=2, flip=True, generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, dy:dy + 6, dx:dx + 7] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    same = random_crop_flip(x, padding=0, flip=False, generator=g)
    assert torch.equal(same, x)


def test_batches_cover_epoch_and_resume_state():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    y = torch.arange(10)
    b = DeviceBatches(x, y, 4, seed=3)
    assert len(b) == 3
    seen = torch.cat([yy for _, yy in b])
    assert sorted(seen.tolist()) == list(range(10))       # last batch of another size included
    state = b.state()
    first = [yy.tolist() for _, yy in b]
    b.set_state(state)
    assert [yy.tolist() for _, yy in b] == first


def test_subset_noise_and_validation_split():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(1000) % 10
    idx = stratified_subset(y, 0.3, g)
    assert torch.bincount(y[idx]).tolist() == [30] * 10
    noisy = symmetric_label_noise(y, 0.4, 10, g)
    changed = noisy != y
    assert changed.sum() == 400                              # exactly the rate, never the same label
    cfg = DataConfig(source="digits", val_size=100, train_fraction=0.5, label_noise=0.2)
    a, b = prepare_data(cfg, seed=1), prepare_data(cfg, seed=1)
    assert torch.equal(a.train_y, b.train_y) and len(a.val_y) == 100
    assert abs(len(a.train_y) - 0.5 * (1437 - 100)) <= 10
    assert len(set(a.train_index.tolist())) == len(a.train_index)


def test_real_cifar10_jpeg_zips(cifar_jpeg_dir, tmp_path):
    d = load_source("imagefolder", root=str(cifar_jpeg_dir), cache_dir=str(tmp_path))
    assert d.train_x.shape == (50000, 3, 32, 32) and d.test_x.shape == (10000, 3, 32, 32)
    assert d.classes[:3] == ["airplane", "automobile", "bird"] and d.classes[-1] == "truck"
    assert torch.bincount(d.test_y).tolist() == [1000] * 10
    mean, _ = d.mean_std()
    assert mean == pytest.approx([0.4914, 0.4822, 0.4465], abs=0.01)   # CIFAR-10's known channel means
