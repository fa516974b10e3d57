"""ResNet-18, CIFAR variant (3x3 stem, no max-pool, BasicBlocks [2,2,2,2],
widths 64-512 times a multiplier), as in the ConvNorm paper's experiments."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .common import InputNormalize, make_conv, norm_layer, scaled
from .registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, normalizer, in_planes, planes, stride, batchnorm):
        super().__init__()
        self.conv1 = make_conv(normalizer, "block_conv1", in_planes, planes, 3, stride, 1)
        self.bn1 = norm_layer(planes, batchnorm)
        self.conv2 = make_conv(normalizer, "block_conv2", planes, planes, 3, 1, 1)
        self.bn2 = norm_layer(planes, batchnorm)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                make_conv(normalizer, "shortcut", in_planes, planes, 1, stride, 0),
                norm_layer(planes, batchnorm),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, normalizer, num_blocks, num_classes, in_channels, mean, std,
                 batchnorm, width=1.0):
        super().__init__()
        widths = [scaled(w, width) for w in (64, 128, 256, 512)]
        self.normalize = InputNormalize(mean, std)
        self.conv1 = make_conv(normalizer, "stem", in_channels, widths[0], 3, 1, 1)
        self.bn1 = norm_layer(widths[0], batchnorm)
        layers, in_planes = [], widths[0]
        for i, (planes, n) in enumerate(zip(widths, num_blocks)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(normalizer, in_planes, planes, stride, batchnorm))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model("resnet18")
def resnet18(normalizer, num_classes, in_channels, mean, std, batchnorm, width=1.0):
    return ResNet(normalizer, [2, 2, 2, 2], num_classes, in_channels, mean, std, batchnorm, width)
