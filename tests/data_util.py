"""Data on disk for the data tests: a folder's train/ and test/ splits packed
into train.zip and test.zip (as the CIFAR-10 JPEG copy comes), and a small
CIFAR-10 in the official python layout."""
import pickle
import zipfile
from pathlib import Path

import numpy as np


def zip_splits(folder, zips, pattern="*.png", *, skip_dotfiles=False, date_time=None):
    """Pack ``folder/{train,test}/**/pattern`` into ``zips/{split}.zip`` (stored,
    members named split/class/file); ``date_time`` fixes every member's time."""
    folder, zips = Path(folder), Path(zips)
    zips.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with zipfile.ZipFile(zips / f"{split}.zip", "w", zipfile.ZIP_STORED) as zf:
            for p in sorted((folder / split).rglob(pattern)):
                if skip_dotfiles and p.name.startswith("."):
                    continue
                name = p.relative_to(folder).as_posix()
                zf.write(p, name)
                if date_time is not None:
                    zf.getinfo(name).date_time = date_time
    return zips


def fake_cifar10(root, n=10, batch_1=None):
    """``root/cifar-10-batches-py`` in the official python layout (pickle protocol
    2, as the real files are): n random images per batch, every class among the
    labels; ``batch_1`` replaces data_batch_1's bytes."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": list(rng.permutation(n) % 10)}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f, protocol=2)
    if batch_1 is not None:
        (folder / "data_batch_1").write_bytes(batch_1)
    return folder
