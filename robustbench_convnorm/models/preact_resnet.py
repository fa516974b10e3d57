"""PreAct-ResNet-18 (He et al., ECCV 2016, identity mappings), CIFAR variant,
the standard architecture of fast adversarial training (Wong et al. 2020)
and of many RobustBench entries: BN-ReLU before each conv, 3x3 stem, no
max-pool, [2, 2, 2, 2] pre-activation blocks of widths 64-512 times
``width``. Convs come from the normalizer (``make_conv``, roles as in
ResNet-18); BatchNorm is the model's ``batchnorm`` switch."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .activations import make_activation
from .common import InputNormalize, make_conv, norm_layer, scaled
from .registry import register_model


class PreActBlock(nn.Module):
    def __init__(self, normalizer, in_planes, planes, stride, batchnorm, activation="relu"):
        super().__init__()
        self.act1, self.act2 = make_activation(activation), make_activation(activation)
        self.bn1 = norm_layer(in_planes, batchnorm)
        self.conv1 = make_conv(normalizer, "block_conv1", in_planes, planes, 3, stride, 1)
        self.bn2 = norm_layer(planes, batchnorm)
        self.conv2 = make_conv(normalizer, "block_conv2", planes, planes, 3, 1, 1)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = make_conv(normalizer, "shortcut", in_planes, planes, 1, stride, 0)

    def forward(self, x):
        out = self.act1(self.bn1(x))
        # the projection shortcut sees the pre-activated input, as in the paper's code
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + shortcut


def preact_stages(normalizer, in_planes, stages, batchnorm, activation):
    """Stages of PreActBlocks from (planes, blocks) pairs: every stage after the
    first halves the resolution in its first block. Returns (stages, out planes)."""
    out = []
    for i, (planes, n) in enumerate(stages):
        blocks = []
        for j in range(n):
            blocks.append(PreActBlock(normalizer, in_planes, planes, 2 if (i > 0 and j == 0) else 1, batchnorm,
                                      activation))
            in_planes = planes
        out.append(nn.Sequential(*blocks))
    return out, in_planes


class PreActResNet(nn.Module):
    def __init__(self, normalizer, num_blocks, num_classes, in_channels, mean, std, batchnorm, width=1.0,
                 activation="relu"):
        super().__init__()
        widths = [scaled(w, width) for w in (64, 128, 256, 512)]
        self.normalize = InputNormalize(mean, std)
        self.conv1 = make_conv(normalizer, "stem", in_channels, widths[0], 3, 1, 1)
        layers, in_planes = preact_stages(normalizer, widths[0], zip(widths, num_blocks), batchnorm, activation)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = norm_layer(in_planes, batchnorm)
        self.act = make_activation(activation)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.act(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("preact_resnet18")
def preact_resnet18(normalizer, num_classes, in_channels, mean, std, batchnorm, width=1.0, activation="relu"):
    """PreAct-ResNet-18; ``activation`` relu (default) | maxmin | groupsort."""
    return PreActResNet(normalizer, [2, 2, 2, 2], num_classes, in_channels, mean, std, batchnorm, width,
                        activation)
