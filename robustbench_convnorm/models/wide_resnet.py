"""WideResNet-d-k (Zagoruyko & Komodakis, BMVC 2016), the architecture of
RobustBench's CIFAR-10 Linf leaderboard (WRN-28-10, WRN-34-10): a 3x3 stem
of 16 channels, three stages of (depth - 4) / 6 pre-activation blocks of
widths 16k, 32k, 64k (times ``width``; strides 1, 2, 2), then BN-ReLU,
global average pooling and a linear layer. ``depth`` (28) and
``widen_factor`` (10) are options; convs come from the normalizer; no
dropout (as RobustBench's entries)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .activations import make_activation
from .common import InputNormalize, make_conv, norm_layer, scaled
from .preact_resnet import preact_stages
from .registry import register_model


class WideResNet(nn.Module):
    def __init__(self, normalizer, depth, widen_factor, num_classes, in_channels, mean, std, batchnorm,
                 width=1.0, activation="relu"):
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"wide_resnet: depth must be 6n + 4 (10, 16, 22, 28, 34, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [scaled(16, width)] + [scaled(16 * widen_factor * m, width) for m in (1, 2, 4)]
        self.normalize = InputNormalize(mean, std)
        self.conv1 = make_conv(normalizer, "stem", in_channels, widths[0], 3, 1, 1)
        stages, in_planes = preact_stages(normalizer, widths[0], [(planes, n) for planes in widths[1:]], batchnorm,
                                          activation)
        self.block1, self.block2, self.block3 = stages
        self.bn = norm_layer(in_planes, batchnorm)
        self.act = make_activation(activation)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        out = self.act(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("wide_resnet")
def wide_resnet(normalizer, num_classes, in_channels, mean, std, batchnorm, width=1.0, depth=28,
                widen_factor=10, activation="relu"):
    """WRN-``depth``-``widen_factor`` (28-10 by default; 34-10 with depth: 34); ``activation``
    relu | maxmin | groupsort."""
    return WideResNet(normalizer, int(depth), int(widen_factor), num_classes, in_channels, mean, std,
                      batchnorm, width, activation)
