"""Rules for the non-conv modules: activations, BatchNorm in eval mode, the
final linear layer, pooling, reshaping, the input normalization.

Each value is a sound L2 bound of the module for the input shape given:
exact where cheap (linear layers, BatchNorm, adaptive average pooling),
otherwise a simple upper bound whose argument is in the rule's docstring.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import nn

from .._util import pair
from .registry import Unbounded, register_module_rule

__all__ = ["adaptive_avg_matrix", "avg_pool_bound", "max_pool_bound", "pool_cover"]

# largest slope of each activation (its Lipschitz constant)
_GELU_SLOPE = 1.1289     # max of d/dx x*Phi(x), at x ~ 0.75 (1.12899...): rounded up
_SILU_SLOPE = 1.0999     # max of d/dx x*sigmoid(x), at x ~ 2.4 (1.09984...): rounded up


@register_module_rule(nn.ReLU, nn.ReLU6, nn.Tanh, nn.Hardtanh, nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout,
                      nn.Dropout2d, nn.Softsign, nn.Tanhshrink, nn.Softshrink)
def one_lipschitz(module: nn.Module, shape: Tuple[int, ...]) -> float:
    """Slope at most 1 everywhere (Dropout is the identity in eval mode;
    reshaping keeps every entry). Hardshrink jumps, so it has no rule."""
    return 1.0


@register_module_rule(nn.LeakyReLU)
def leaky_relu(module: nn.LeakyReLU, shape) -> float:
    return max(1.0, abs(float(module.negative_slope)))


@register_module_rule(nn.ELU, nn.CELU)
def elu(module: nn.Module, shape) -> float:
    return max(1.0, abs(float(module.alpha)))


@register_module_rule(nn.Sigmoid)
def sigmoid(module: nn.Module, shape) -> float:
    return 0.25


@register_module_rule(nn.Softplus)
def softplus(module: nn.Module, shape) -> float:
    return 1.0


@register_module_rule(nn.GELU)
def gelu(module: nn.Module, shape) -> float:
    return _GELU_SLOPE


@register_module_rule(nn.SiLU)
def silu(module: nn.Module, shape) -> float:
    return _SILU_SLOPE


@register_module_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def batchnorm_eval(module: nn.modules.batchnorm._BatchNorm, shape) -> float:
    """In eval mode with running statistics, channel c is scaled by
    |gamma_c| / sqrt(var_c + eps): the largest of these."""
    if module.running_var is None:
        raise Unbounded(f"{type(module).__name__} without running statistics normalizes each batch by its own "
                        f"statistics, which depends on the other inputs")
    scale = 1.0 / torch.sqrt(module.running_var.detach().to(torch.float64) + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.detach().to(torch.float64).abs()
    return float(scale.max()) if scale.numel() else 0.0


@register_module_rule(nn.Linear)
def linear_spectral(module: nn.Linear, shape) -> float:
    """The weight's exact spectral norm (the bias drops out)."""
    return float(torch.linalg.matrix_norm(module.weight.detach().to(torch.float64), ord=2))


def _input_normalize_type():
    from ...models.common import InputNormalize
    return InputNormalize


@register_module_rule(_input_normalize_type())
def input_normalize(module: nn.Module, shape) -> float:
    """(x - mean) / std: 1 / min |std|."""
    std = module.std.detach().to(torch.float64).abs()
    if not bool((std > 0).all()):
        raise Unbounded("InputNormalize has a zero std")
    return float(1.0 / std.min())


def pool_cover(kernel: int, stride: int, dilation: int = 1) -> int:
    """How many pooling windows along one axis can hold the same input position."""
    return max(1, min(kernel, -(-((kernel - 1) * dilation + 1) // stride)))


def max_pool_bound(kernel, stride, dilation=1) -> float:
    """|max(a) - max(b)| <= max |a - b| <= ||a - b||_2 over one window, and each
    input lies in at most cover_h * cover_w windows: sqrt of that."""
    (kh, kw), (sh, sw), (dh, dw) = pair(kernel), pair(stride if stride else kernel), pair(dilation)
    return math.sqrt(pool_cover(kh, sh, dh) * pool_cover(kw, sw, dw))


def avg_pool_bound(kernel, stride, padding=0, count_include_pad=True, divisor_override=None) -> float:
    """Schur's test, ||A|| <= sqrt(max row sum * max column sum): a row (an
    output) sums to at most k*k/divisor, a column (an input) to at most
    cover/divisor; without counting the padding the divisor may be 1."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride if stride else kernel), pair(padding)
    taps = kh * kw
    divisor = divisor_override or (taps if (count_include_pad or (ph == 0 and pw == 0)) else 1)
    cover = pool_cover(kh, sh) * pool_cover(kw, sw)
    return math.sqrt(taps / divisor * cover / divisor)


@register_module_rule(nn.MaxPool2d)
def max_pool(module: nn.MaxPool2d, shape) -> float:
    return max_pool_bound(module.kernel_size, module.stride, module.dilation)


@register_module_rule(nn.AvgPool2d)
def avg_pool(module: nn.AvgPool2d, shape) -> float:
    return avg_pool_bound(module.kernel_size, module.stride, module.padding, module.count_include_pad,
                          module.divisor_override)


def adaptive_avg_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """The (size_out, size_in) averaging matrix of adaptive average pooling along one axis."""
    m = torch.zeros(size_out, size_in, dtype=torch.float64)
    for j in range(size_out):
        start, end = (j * size_in) // size_out, -(-((j + 1) * size_in) // size_out)
        m[j, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_bound(shape: Sequence[int], output_size) -> float:
    """Exact: the pooling is the Kronecker product of one averaging matrix per axis."""
    if len(shape) < 2:
        raise Unbounded(f"adaptive average pooling of an input of shape {list(shape)}")
    h, w = int(shape[-2]), int(shape[-1])
    oh, ow = pair(output_size) if not isinstance(output_size, (tuple, list)) else (
        output_size[0] or h, output_size[1] or w)
    norm = 1.0
    for size_in, size_out in ((h, int(oh)), (w, int(ow))):
        norm *= float(torch.linalg.matrix_norm(adaptive_avg_matrix(size_in, size_out), ord=2))
    return norm


def adaptive_max_bound(shape: Sequence[int], output_size) -> float:
    """sqrt of the most windows that hold one input, per axis."""
    h, w = int(shape[-2]), int(shape[-1])
    oh, ow = pair(output_size) if not isinstance(output_size, (tuple, list)) else (
        output_size[0] or h, output_size[1] or w)
    cover = 1
    for size_in, size_out in ((h, int(oh)), (w, int(ow))):
        cover *= int((adaptive_avg_matrix(size_in, size_out) > 0).sum(0).max())
    return math.sqrt(cover)


@register_module_rule(nn.AdaptiveAvgPool2d)
def adaptive_avg_pool(module: nn.AdaptiveAvgPool2d, shape) -> float:
    return adaptive_avg_bound(shape, module.output_size)


@register_module_rule(nn.AdaptiveMaxPool2d)
def adaptive_max_pool(module: nn.AdaptiveMaxPool2d, shape) -> float:
    return adaptive_max_bound(shape, module.output_size)
