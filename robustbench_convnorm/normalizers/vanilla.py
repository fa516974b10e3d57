"""No normalization: the plain ``nn.Conv2d``. With ``batchnorm: true`` this is
the "BN" baseline of the ConvNorm paper's Table 1."""
from torch import nn

from .base import Normalizer
from .registry import register_normalizer


@register_normalizer("vanilla")
class Vanilla(Normalizer):
    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
