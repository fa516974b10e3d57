"""Minibatches from tensors already on the device, augmented there for the
whole batch at once (no DataLoader, no worker processes, no host copies)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float().div_(255.0)


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, batched.
    The random numbers come from a CPU generator, so they are the same on
    every device for one seed."""
    n, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None])            # (n, h)
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None])            # (n, w)
        x = padded[torch.arange(n, device=x.device)[:, None, None, None],
                   torch.arange(x.shape[1], device=x.device)[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


class DeviceBatches:
    """Shuffled minibatches of (float images in [0,1], labels), with indices.

    ``state``/``set_state`` expose the generator so a resumed run continues
    the exact same data order and augmentation.
    """

    def __init__(self, x_uint8, y, batch_size, *, shuffle=True, crop_padding=0, flip=False,
                 seed=0, drop_last=False):
        self.x, self.y = x_uint8, y
        self.batch_size = batch_size
        self.shuffle, self.crop_padding, self.flip, self.drop_last = shuffle, crop_padding, flip, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.x.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = to_float(self.x[idx])
            if self.crop_padding or self.flip:
                x = random_crop_flip(x, self.crop_padding, self.flip, self.generator)
            yield x, self.y[idx]

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
