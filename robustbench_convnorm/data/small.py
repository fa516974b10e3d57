"""Offline sources: scikit-learn's bundled digits, and generated data for tests."""
from __future__ import annotations

import numpy as np
import torch

from .base import ImageData, register_source


@register_source("digits")
def digits(root=None, download=True, test_fraction: float = 0.2, split_seed: int = 0):
    """The 1,797 real 8x8 handwritten digits (UCI, shipped with scikit-learn),
    split deterministically and stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 -> 0..255, 1 channel
    y = d.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(x, y, test_size=test_fraction, random_state=split_seed, stratify=y)
    return ImageData(torch.from_numpy(tr_x), torch.from_numpy(tr_y), torch.from_numpy(te_x),
                     torch.from_numpy(te_y), [str(i) for i in range(10)], name="digits",
                     note="scikit-learn digits (8x8 grayscale)")


@register_source("synthetic")
def synthetic(root=None, download=True, n_train: int = 256, n_test: int = 128, num_classes: int = 4,
              channels: int = 3, size: int = 16, seed: int = 0, separation: float = 60.0):
    """Learnable generated images: each class is a fixed random pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, channels, size, size, generator=g) * 2 - 1

    def make(n):
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        x = 127.5 + separation * protos[y] + 40.0 * torch.randn(n, channels, size, size, generator=g)
        return x.round().clamp(0, 255).to(torch.uint8), y.to(torch.int64)

    tr_x, tr_y = make(n_train)
    te_x, te_y = make(n_test)
    return ImageData(tr_x, tr_y, te_x, te_y, [f"class{i}" for i in range(num_classes)], name="synthetic",
                     note="generated")
