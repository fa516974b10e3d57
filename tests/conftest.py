from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


# Tiny test models gain nothing from a second thread, and two OpenMP threads on
# a busy 2-core machine run 10-100x slower than one.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture
def cifar_jpeg_dir():
    d = SHARED_DATA / "cifar10-jpeg"
    if not (d / "test.zip").exists():
        pytest.skip(f"the CIFAR-10 JPEG copy is not at {d} (it lives in ../shared beside the project)")
    return d
