"""From a source's full data to a run's data: subset, label noise, validation
split, all fixed by a seed so that every normalizer of a grid sees the same."""
from __future__ import annotations

import dataclasses

import torch

from .base import ImageData, load_source
from .location import expand_root


def stratified_subset(y: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices keeping ``fraction`` of each class (at least one)."""
    keep = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        keep.append(idx[: max(1, int(round(fraction * len(idx))))])
    return torch.sort(torch.cat(keep)).values


def symmetric_label_noise(y: torch.Tensor, rate: float, num_classes: int, generator: torch.Generator):
    """Replace a ``rate`` fraction of labels by a uniformly drawn *other* class."""
    y = y.clone()
    n_noisy = int(round(rate * len(y)))
    idx = torch.randperm(len(y), generator=generator)[:n_noisy]
    shift = torch.randint(1, num_classes, (n_noisy,), generator=generator)
    y[idx] = (y[idx] + shift) % num_classes
    return y


def load_full(data_cfg) -> ImageData:
    """The source's whole data; ``data.root`` as location.expand_root reads it."""
    return load_source(data_cfg.source, root=expand_root(data_cfg.root), download=data_cfg.download,
                       **data_cfg.options)


def prepare_data(data_cfg, seed: int, full: ImageData = None) -> ImageData:
    """Apply the config's subset, noise and split to the source's data (loaded
    here unless ``full`` is given; ``full`` itself is left unchanged)."""
    data = dataclasses.replace(full if full is not None else load_full(data_cfg))
    g = torch.Generator().manual_seed((10_007 * seed + 1) % 2 ** 64)  # any 64-bit seed; small ones unchanged
    index = torch.arange(len(data.train_y))
    if data_cfg.val_size:
        if data_cfg.val_size >= len(index):
            raise ValueError(f"data.val_size={data_cfg.val_size} leaves no training data "
                             f"(train has {len(index)} examples)")
        perm = torch.randperm(len(index), generator=g)
        val, index = perm[: data_cfg.val_size], torch.sort(perm[data_cfg.val_size:]).values
        data.val_x, data.val_y = data.train_x[val], data.train_y[val]
    if data_cfg.train_fraction < 1.0:
        index = index[stratified_subset(data.train_y[index], data_cfg.train_fraction, g)]
    data.train_x, data.train_y = data.train_x[index], data.train_y[index]
    data.train_index = index
    if data_cfg.label_noise > 0:
        data.train_y = symmetric_label_noise(data.train_y, data_cfg.label_noise, data.num_classes, g)
    return data
