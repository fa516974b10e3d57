"""What every data source returns, and the source registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from ..registry import Registry, check_options

SOURCES: Registry = Registry("data source")


class DataError(RuntimeError):
    """Data that cannot be found or read; the message says where to put it."""


@dataclass
class ImageData:
    """uint8 images (N, C, H, W) and int64 labels for train and test."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: List[str]
    name: str
    note: str = ""
    val_x: Optional[torch.Tensor] = None
    val_y: Optional[torch.Tensor] = None
    train_index: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def mean_std(self):
        """Per-channel mean and std of the training images in [0,1]."""
        x = self.train_x.to(torch.float64) / 255.0
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()

    def check(self) -> "ImageData":
        if self.num_classes < 2:
            raise DataError(f"{self.name}: {self.num_classes} class(es); a classifier needs at least two")
        for split, (x, y) in {"train": (self.train_x, self.train_y), "test": (self.test_x, self.test_y)}.items():
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise DataError(f"{self.name}: {split} images must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DataError(f"{self.name}: {split} labels must be int64 of length {x.shape[0]}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DataError(f"{self.name}: {split} labels outside 0..{self.num_classes - 1}")
        missing = sorted(set(torch.unique(self.train_y).tolist()) - set(torch.unique(self.test_y).tolist()))
        if missing:
            names = [self.classes[i] for i in missing]
            raise DataError(f"{self.name}: the test split has no example of class(es) {names}, which train "
                            f"has; robust accuracy would not cover them: add test examples")
        return self


def register_source(name: str):
    """Decorator for ``fn(root, download, **options) -> ImageData``."""
    return SOURCES.register(name)


def load_source(source: str, root=None, download: bool = True, **options) -> ImageData:
    fn = SOURCES.get(source)
    check_options("data source", source, fn, options)
    return fn(root=root, download=download, **options).check()


def list_sources() -> List[str]:
    return SOURCES.names()
