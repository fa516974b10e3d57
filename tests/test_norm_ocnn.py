"""OCNN's kernel-orthogonality penalty against the explicit matrix of the
strided circular convolution: ||M M^T - I||_F = (n/s) * distance."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from operators import explicit_operator
from robustbench_convnorm.models import build_model
from robustbench_convnorm.normalizers import get_normalizer
from robustbench_convnorm.normalizers.ocnn import OCNNConv2d, orthogonality_penalty
from robustbench_convnorm.registry import RegistryError


def _circular_strided_conv(kernel, stride, n):
    k = kernel.shape[-1]
    p = (k - 1) // 2

    def apply(x):
        x = F.pad(x, (p, k, p, k), mode="circular")  # enough wrap-around on both sides
        return F.conv2d(x, kernel, stride=stride)[..., : n // stride, : n // stride]
    return apply


@pytest.mark.parametrize("c_out,c_in,k,stride", [(3, 2, 3, 1), (4, 3, 3, 2), (5, 2, 5, 2), (2, 3, 1, 2)])
def test_distance_equals_explicit_operator_gram_error(c_out, c_in, k, stride):
    # n/s must exceed the number of shifts the kernel spans, or M M^T wraps around.
    n = 8 if k <= 3 else 12
    kernel = torch.randn(c_out, c_in, k, k, dtype=torch.float64)
    m = explicit_operator(_circular_strided_conv(kernel, stride, n), (c_in, n, n))
    gram_error = torch.linalg.matrix_norm(m @ m.T - torch.eye(m.shape[0], dtype=m.dtype))
    assert orthogonality_penalty(kernel, stride) == pytest.approx(gram_error.item() / (n // stride), rel=1e-10)


def test_stride_two_uses_the_papers_padding():
    kernel = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    got = orthogonality_penalty(kernel, 2)

    def by_padding(p):
        corr = F.conv2d(kernel, kernel, stride=2, padding=p)
        target = torch.zeros_like(corr)
        c = corr.shape[-1] // 2
        target[range(4), range(4), c, c] = 1
        return torch.linalg.vector_norm(corr - target).item()

    assert got.item() == pytest.approx(by_padding(2), rel=1e-12)  # floor((3-1)/2)*2
    assert got.item() != pytest.approx(by_padding(1), rel=1e-3)   # the public code's padding=1


def test_penalty_is_zero_for_orthogonal_kernels():
    # A centred delta with orthonormal rows (stride 1).
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    delta = torch.zeros(4, 6, 3, 3, dtype=torch.float64)
    delta[:, :, 1, 1] = q[:4]
    assert orthogonality_penalty(delta, 1) < 1e-12
    # Stride 2: one output per (input channel, 2x2 phase), i.e. space-to-depth.
    s2d = torch.zeros(8, 2, 3, 3, dtype=torch.float64)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                s2d[c * 4 + i * 2 + j, c, i, j] = 1.0
    assert orthogonality_penalty(s2d, 2) < 1e-12
    assert orthogonality_penalty(s2d, 1) > 0.5  # at stride 1 the same kernel is not orthogonal
    # 1x1 widening: orthonormal columns, judged with the smaller Gram W^T W.
    q, _ = torch.linalg.qr(torch.randn(8, 3, dtype=torch.float64))
    assert orthogonality_penalty(q.reshape(8, 3, 1, 1), 2) < 1e-12


@pytest.mark.parametrize("stride", [1, 2])
def test_positive_for_random_kernels_and_its_gradient_lowers_it(stride):
    kernel = (0.3 * torch.randn(4, 4, 3, 3)).requires_grad_(True)
    start = orthogonality_penalty(kernel, stride)
    assert start > 0.1
    opt = torch.optim.SGD([kernel], lr=0.02)
    values = []
    for _ in range(60):
        opt.zero_grad()
        loss = orthogonality_penalty(kernel, stride)
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert values[1] < values[0]
    assert values[-1] < 0.3 * start.item()


def _resnet(normalizer, width=0.125):
    return build_model("resnet18", normalizer, num_classes=10, in_channels=3, mean=[0.5] * 3,
                       std=[0.25] * 3, batchnorm=False, width=width)


def test_reference_layers_are_block_conv1_and_shortcuts():
    normalizer = get_normalizer("ocnn", lam=0.5)
    model = _resnet(normalizer)
    names = [name for name, _ in normalizer.covered(model)]
    assert len(names) == 8 + 3 and "conv1" not in names
    assert "layer1.0.conv1" in names and "layer2.0.shortcut.0" in names and "layer1.0.conv2" not in names
    expected = 0.5 * sum(orthogonality_penalty(model.get_submodule(name).weight, model.get_submodule(name).stride)
                         for name in names)
    torch.testing.assert_close(normalizer.penalty(model), expected)
    # Changing the stem does not change the reference penalty, but does change "all".
    every = get_normalizer("ocnn", lam=0.5, layers="all")
    assert len(every.covered(model)) == 1 + 16 + 3
    before_ref, before_all = normalizer.penalty(model).item(), every.penalty(model).item()
    with torch.no_grad():
        model.conv1.weight.mul_(3.0)
    assert normalizer.penalty(model).item() == pytest.approx(before_ref, rel=1e-12)
    assert every.penalty(model).item() != pytest.approx(before_all, rel=1e-6)


def test_penalty_covers_only_ocnn_convs_and_reaches_the_loss():
    normalizer = get_normalizer("ocnn")
    model = _resnet(normalizer)
    # Swap one covered conv for a plain nn.Conv2d with the same role: it drops out.
    block = model.layer1[0]
    plain = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
    plain.conv_role = "block_conv1"
    block.conv1 = plain
    assert "layer1.0.conv1" not in [name for name, _ in normalizer.covered(model)]
    normalizer.penalty(model).backward()
    assert model.layer1[1].conv1.weight.grad.abs().sum() > 0
    assert model.layer1[1].conv2.weight.grad is None  # block_conv2 is not covered


def _expected(normalizer, convs):
    return normalizer.lam * sum(orthogonality_penalty(m.weight, m.stride) for m in convs)


class _OutsideTheBuilders(nn.Module):
    """A model whose convs come from the normalizer but carry no conv_role."""

    def __init__(self, normalizer):
        super().__init__()
        self.stem = normalizer.conv(3, 8, 3, padding=1)
        self.down = normalizer.conv(8, 16, 3, stride=2, padding=1)
        self.project = normalizer.conv(8, 16, 1, stride=2)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.down(x)) + self.project(x)
        return self.head(x.mean(dim=(2, 3)))


def test_untagged_ocnn_convs_are_all_covered_with_a_warning():
    normalizer = get_normalizer("ocnn", lam=0.1)
    model = _OutsideTheBuilders(normalizer)
    with pytest.warns(UserWarning, match="3 untagged OCNN convs"):
        penalty = normalizer.penalty(model)
    torch.testing.assert_close(penalty, _expected(normalizer, [model.stem, model.down, model.project]))
    assert penalty > 0.1 * 1.0  # random kernels are far from orthogonal: not a silent zero
    penalty.backward()
    assert all(c.weight.grad.abs().sum() > 0 for c in (model.stem, model.down, model.project))
    # A builder's model with one extra untagged OCNN conv: the reference roles plus that conv.
    built = _resnet(normalizer)
    built.extra = normalizer.conv(8, 8, 3, padding=1)
    names = [name for name, _ in normalizer.covered(built)]
    assert len(names) == 8 + 3 + 1 and "extra" in names and "conv1" not in names


def test_models_without_ocnn_convs_get_every_ungrouped_conv():
    normalizer = get_normalizer("ocnn")
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.Conv2d(8, 4, 1))
    with pytest.warns(UserWarning, match="plain nn.Conv2d"):
        penalty = normalizer.penalty(plain)
    torch.testing.assert_close(penalty, _expected(normalizer, [plain[0], plain[3]]))  # not the depthwise one
    # A builder's vanilla model keeps its role-based (reference) coverage.
    vanilla = _resnet(get_normalizer("vanilla"))
    names = [name for name, _ in normalizer.covered(vanilla)]
    assert len(names) == 8 + 3 and "conv1" not in names and "layer1.0.conv2" not in names


def test_a_penalty_without_layers_is_an_error_not_a_zero():
    normalizer = get_normalizer("ocnn")
    stem_only = nn.Sequential(normalizer.conv(3, 8, 3, padding=1))
    stem_only[0].conv_role = "stem"  # tagged, but "reference" leaves the stem out
    with pytest.raises(ValueError, match="no conv of the model to regularize.*layers: all"):
        normalizer.penalty(stem_only)
    assert get_normalizer("ocnn", layers="all").penalty(stem_only) > 0
    with pytest.raises(ValueError, match="no conv of the model to regularize"):
        normalizer.penalty(nn.Sequential(nn.Flatten(), nn.Linear(12, 10)))


def test_plain_networks_are_covered_entirely_and_options_are_checked():
    normalizer = get_normalizer("ocnn")
    vgg = build_model("vgg16", normalizer, num_classes=10, in_channels=3, mean=[0.5] * 3, std=[0.25] * 3,
                      batchnorm=False, width=0.125)
    assert len(normalizer.covered(vgg)) == 13
    assert all(isinstance(m, OCNNConv2d) for _, m in normalizer.covered(vgg))
    assert get_normalizer("ocnn", **{"lambda": 0.25}).lam == 0.25
    with pytest.raises(RegistryError, match="lam"):
        get_normalizer("ocnn", lamda=0.1)
    with pytest.raises(ValueError, match="layers"):
        get_normalizer("ocnn", layers="some")
