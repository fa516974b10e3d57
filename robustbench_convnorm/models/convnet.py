"""A small, fast residual ConvNet for CPU configs: a 3x3 stem and three
residual stages (the last two strided, with 1x1 projection shortcuts), so it
exercises every kind of conv a normalizer must handle at a fraction of
ResNet-18's cost."""
from __future__ import annotations

from torch import nn
import torch.nn.functional as F

from .common import InputNormalize, make_conv, norm_layer, scaled
from .registry import register_model
from .resnet import BasicBlock


class SmallConvNet(nn.Module):
    def __init__(self, normalizer, num_classes, in_channels, mean, std, batchnorm, width=1.0):
        super().__init__()
        widths = [scaled(w, width) for w in (16, 32, 64)]
        self.normalize = InputNormalize(mean, std)
        self.conv1 = make_conv(normalizer, "stem", in_channels, widths[0], 3, 1, 1)
        self.bn1 = norm_layer(widths[0], batchnorm)
        self.layer1 = BasicBlock(normalizer, widths[0], widths[0], 1, batchnorm)
        self.layer2 = BasicBlock(normalizer, widths[0], widths[1], 2, batchnorm)
        self.layer3 = BasicBlock(normalizer, widths[1], widths[2], 2, batchnorm)
        self.linear = nn.Linear(widths[2], num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("convnet")
def convnet(normalizer, num_classes, in_channels, mean, std, batchnorm, width=1.0):
    return SmallConvNet(normalizer, num_classes, in_channels, mean, std, batchnorm, width)
