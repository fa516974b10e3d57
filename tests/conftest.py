import os
from pathlib import Path

import pytest

import robustbench_convnorm  # noqa: F401  (before torch: $ROBUSTBENCH_CONVNORM_REPRODUCIBLE's pins take effect)
import torch

ROOT = Path(__file__).resolve().parents[1]
#: where the data sets are looked for: $ROBUSTBENCH_DATA (the harness's setting,
#: robustbench_convnorm/data/location.py), then a shared data folder beside the checkout (where CI keeps them)
DATA_DIRS = [Path(os.environ["ROBUSTBENCH_DATA"])] if os.environ.get("ROBUSTBENCH_DATA") else []
DATA_DIRS.append(ROOT.parent / "shared" / "data")


# Console lines without the time of day, so that tests can match whole lines
# (children inherit it; tests/test_runtime_progress.py turns it on)
os.environ.setdefault("ROBUSTBENCH_CONVNORM_TIMESTAMPS", "0")

# Tiny test models gain nothing from a second thread, and two OpenMP threads on
# a busy 2-core machine run 10-100x slower than one.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture
def cifar_jpeg_dir():
    for d in (base / "cifar10-jpeg" for base in DATA_DIRS):
        if (d / "test.zip").exists():
            return d
    pytest.skip(f"the CIFAR-10 JPEG copy (train.zip, test.zip) is not in {DATA_DIRS[0] / 'cifar10-jpeg'}: set "
                f"ROBUSTBENCH_DATA to the folder holding cifar10-jpeg/")
