"""VGG-16, CIFAR variant: thirteen 3x3 convs in five stages with 2x2 max-pools,
then one linear classifier on the 512-wide feature (no 4096-wide head)."""
from __future__ import annotations

from torch import nn

from .common import InputNormalize, make_conv, norm_layer, scaled
from .registry import register_model

VGG16_STAGES = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


class VGG(nn.Module):
    def __init__(self, normalizer, stages, num_classes, in_channels, mean, std, batchnorm, width=1.0):
        super().__init__()
        self.normalize = InputNormalize(mean, std)
        layers, c = [], in_channels
        for stage in stages:
            for w in stage:
                w = scaled(w, width)
                layers += [make_conv(normalizer, "plain", c, w, 3, 1, 1), norm_layer(w, batchnorm), nn.ReLU()]
                c = w
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        out = self.features(self.normalize(x))
        out = nn.functional.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.classifier(out)


@register_model("vgg16")
def vgg16(normalizer, num_classes, in_channels, mean, std, batchnorm, width=1.0):
    return VGG(normalizer, VGG16_STAGES, num_classes, in_channels, mean, std, batchnorm, width)
