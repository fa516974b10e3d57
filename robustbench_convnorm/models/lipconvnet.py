"""The ConvNet family of "1-Lipschitz Layers Compared" (Prach, Brau,
Buttazzo & Lampert, CVPR 2024), generic over the layer.

    input [0,1] -> InputNormalize -> zero channels up to the base width
    -> stem: one 1x1 layer + activation
    -> stages s = 0..S-1 at width base * 2^s: ``layers_per_stage`` layers
       (k x k; 1 x 1 in the last stage, at 2 x 2 pixels) each followed by the
       activation, then downsampling: the first half of the channels, then
       pixel-unshuffle by 2 (2x the channels, half the size)
    -> head: one 1x1 layer at width base * 2^S on the 1 x 1 map, flattened,
       its first ``num_classes`` entries are the logits.

A layer is ``normalizer.block(c, k)`` where the normalizer builds whole
layers (SLL, CPL) and ``normalizer.conv(c, c, k, padding=k//2)`` otherwise.
Sizes (final width 32 x base): xs 16, s 32, m 64, l 128 at 32 x 32 pixels,
S = log2(image size) stages (``stages``; 5 for 32 x 32, 3 for 8 x 8);
``width`` multiplies every width. No BatchNorm. Every part other than the
layers and InputNormalize is 1-Lipschitz and says so (``lipschitz_bound``).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .activations import make_activation
from .common import InputNormalize, make_conv, scaled
from .registry import register_model

#: the comparison paper's width of the last stage divided by 32
SIZES = {"xs": 16, "s": 32, "m": 64, "l": 128}


class ZeroChannelPad(nn.Module):
    """Appends zero channels up to ``channels`` (an isometry)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        if x.shape[1] > self.channels:
            raise ValueError(f"lipconvnet: {x.shape[1]} input channels exceed the base width {self.channels}")
        return F.pad(x, (0, 0, 0, 0, 0, self.channels - x.shape[1]))

    def lipschitz_bound(self) -> float:
        return 1.0


class Downsample(nn.Module):
    """First half of the channels, then pixel-unshuffle by 2: C x H x W ->
    2C x H/2 x W/2. A projection then a permutation: 1-Lipschitz."""

    def forward(self, x):
        return F.pixel_unshuffle(x[:, : x.shape[1] // 2], 2)

    def lipschitz_bound(self) -> float:
        return 1.0


class FirstLogits(nn.Module):
    """Flatten and keep the first ``num_classes`` entries (a projection)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"lipconvnet: the head expects a 1x1 map, got {tuple(x.shape[-2:])}: set "
                             f"model.options.stages to log2 of the image size")
        return x.flatten(1)[:, : self.num_classes]

    def lipschitz_bound(self) -> float:
        return 1.0


def _layer(normalizer, channels: int, kernel_size: int, role: str) -> nn.Module:
    block = normalizer.block(channels, kernel_size)
    if block is not None:
        return block
    return make_conv(normalizer, role, channels, channels, kernel_size, 1, kernel_size // 2)


class LipConvNet(nn.Module):
    def __init__(self, normalizer, num_classes, in_channels, mean, std, *, size="xs", width=1.0, stages=5,
                 layers_per_stage=5, kernel_size=3, activation="maxmin"):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"lipconvnet: size must be one of {sorted(SIZES)}, got {size!r}")
        base = scaled(SIZES[size] * 32 // 2 ** stages, width)
        base += base % 2  # MaxMin and the downsampling halve the channels
        if base * 2 ** stages < num_classes:
            raise ValueError(f"lipconvnet: the head's {base * 2 ** stages} channels are fewer than "
                             f"{num_classes} classes: raise size or width")
        self.normalize = InputNormalize(mean, std)
        self.pad = ZeroChannelPad(base)
        self.stem = nn.Sequential(_layer(normalizer, base, 1, "stem"), make_activation(activation))
        stage_list, c = [], base
        for s in range(stages):
            k = 1 if s == stages - 1 else kernel_size
            parts = []
            for _ in range(layers_per_stage):
                parts += [_layer(normalizer, c, k, "plain"), make_activation(activation)]
            parts.append(Downsample())
            stage_list.append(nn.Sequential(*parts))
            c *= 2
        self.stages = nn.Sequential(*stage_list)
        self.head = _layer(normalizer, c, 1, "plain")
        self.logits = FirstLogits(num_classes)

    def forward(self, x):
        out = self.stem(self.pad(self.normalize(x)))
        return self.logits(self.head(self.stages(out)))


@register_model("lipconvnet")
def lipconvnet(normalizer, num_classes, in_channels, mean, std, batchnorm, width=1.0, size="xs", stages=5,
               layers_per_stage=5, kernel_size=3, activation="maxmin"):
    """The comparison paper's ConvNet: ``size`` xs|s|m|l, ``stages`` = log2(image
    size), ``layers_per_stage`` (5), ``kernel_size`` (3), ``activation``
    maxmin|groupsort|relu. No BatchNorm."""
    if batchnorm:
        raise ValueError("lipconvnet has no BatchNorm (a 1-Lipschitz network): set batchnorm: false")
    return LipConvNet(normalizer, num_classes, in_channels, mean, std, size=size, width=width,
                      stages=int(stages), layers_per_stage=int(layers_per_stage),
                      kernel_size=int(kernel_size), activation=activation)
