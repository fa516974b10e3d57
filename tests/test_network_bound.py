"""The whole-network L2 bound (lipschitz/network): never below a measured lower
bound of the true Lipschitz constant on every architecture and normalizer of
the registries, each rule against explicit operator matrices, unknown modules
refused with a warning, the lipschitz_bound() contract."""
import math
import zlib

import pytest
import torch
from torch import nn

from robustbench_convnorm.lipschitz.network import network_bound, module_bound, Unbounded
from robustbench_convnorm.lipschitz.network.conv_rules import padded_circular_bound
from robustbench_convnorm.models import build_model, list_models
from robustbench_convnorm.normalizers import get_normalizer, list_normalizers

from operators import explicit_operator, singular_values

DT = torch.float64
SHAPE = (3, 8, 8)


def jacobian_norm(model, x):
    """||J(x)||_2 of the logits at x: a lower bound of the Lipschitz constant."""
    jac = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0)).squeeze(0), x)
    return float(singular_values(jac.reshape(jac.shape[0], -1))[0])


def measured_lower_bound(model, gen, points=3, ascent=2):
    """max ||J(x)|| over random points and points moved up the margin gradient."""
    best = 0.0
    for _ in range(points):
        x = torch.rand(SHAPE, generator=gen, dtype=DT)
        for step in range(ascent + 1):
            best = max(best, jacobian_norm(model, x))
            if step == ascent:
                break
            x = x.clone().requires_grad_(True)
            z = model(x.unsqueeze(0))[0]
            top2 = z.topk(2).values
            (g,) = torch.autograd.grad(top2[1] - top2[0], x)   # towards the decision boundary
            x = (x + 0.2 * g / (g.norm() + 1e-12)).clamp(0, 1).detach()
    return best


def perturb_statistics(model, gen):
    """BatchNorm statistics and scales far from 1, ConvNorm's running filter: one training pass."""
    model.train()
    with torch.no_grad():
        model(torch.rand((8,) + SHAPE, generator=gen, dtype=DT))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=DT) * 2 + 0.05)
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=DT) * 1.5)
    model.eval()


@pytest.mark.parametrize("arch", sorted(list_models()))
@pytest.mark.parametrize("normalizer", sorted(list_normalizers()))
def test_network_bound_is_never_below_the_measured_lipschitz_constant(arch, normalizer):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{arch}/{normalizer}".encode()))
    try:
        model = build_model(arch, get_normalizer(normalizer), num_classes=4, in_channels=3, mean=[0.4, 0.5, 0.6],
                            std=[0.2, 0.25, 0.3], batchnorm=True, width=0.0625).to(DT)
    except (ValueError, TypeError) as err:   # a combination the registries refuse at this tiny size
        pytest.skip(f"{arch} with {normalizer} is not built here: {err}")
    # A layer or architecture added to the registries needs a rule or a lipschitz_bound() method
    # (lipschitz/network/registry.py) for this test: the network bound must exist for every one.
    perturb_statistics(model, gen)
    bound = network_bound(model, SHAPE)
    assert bound.value is not None, bound.warnings
    assert not bound.warnings
    measured = measured_lower_bound(model, gen)
    assert measured <= bound.value * (1 + 1e-9), (measured, bound.value)
    # the features' bound times the last layer's norm composes to the whole bound
    assert bound.features is not None
    assert bound.value == pytest.approx(bound.features * float(torch.linalg.matrix_norm(bound.final_weight, 2)))


@pytest.mark.parametrize("k,stride,pad,n", [(3, 1, 1, 6), (3, 2, 1, 7), (1, 2, 0, 6), (5, 2, 2, 6), (3, 1, 0, 5),
                                            (2, 2, 0, 6)])
def test_zero_padded_conv_rule_bounds_the_explicit_operator(k, stride, pad, n):
    gen = torch.Generator().manual_seed(k * 10 + stride)
    conv = nn.Conv2d(3, 4, k, stride=stride, padding=pad, bias=False).to(DT)
    conv.weight.data = torch.randn(conv.weight.shape, generator=gen, dtype=DT)
    exact = float(singular_values(explicit_operator(conv, (3, n, n)))[0])
    bound, how = module_bound(conv, (3, n, n))
    assert how == "conv2d"
    assert exact <= bound * (1 + 1e-12)
    assert bound <= exact * 1.6  # the padded grid is only a little larger than the input


def test_circular_conv_rule_is_exact():
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular", bias=False).to(DT)
    exact = float(singular_values(explicit_operator(conv, (3, 6, 6)))[0])
    assert module_bound(conv, (3, 6, 6))[0] == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("stride,k", [(1, 3), (2, 3), (1, 1), (2, 1)])
def test_convnorm_rule_bounds_the_layer_with_its_running_filter_and_affine(stride, k):
    torch.manual_seed(stride * 7 + k)
    layer = get_normalizer("convnorm", affine_init="conv_default").conv(3, 4, k, stride=stride,
                                                                      padding=k // 2).to(DT)
    layer.train()
    with torch.no_grad():
        layer(torch.rand(2, 3, 6, 6, dtype=DT))
        layer.weight.add_(0.3 * torch.randn_like(layer.weight))   # the running filter now differs from the exact one
    layer.eval()
    ref = layer.affine
    layer.affine = None          # the operator without the affine's bias
    with torch.no_grad():
        saved = ref.bias.clone()
        ref.bias.zero_()
    layer.affine = ref
    exact = float(singular_values(explicit_operator(layer, (3, 6, 6)))[0])
    bound, _ = module_bound(layer, (3, 6, 6))
    assert exact <= bound * (1 + 1e-9)
    ref.bias.data.copy_(saved)


@pytest.mark.parametrize("stride", [1, 2])
def test_cayley_rule_is_one_and_the_exact_norm(stride):
    layer = get_normalizer("cayley").conv(4, 4, 3, stride=stride).to(DT)
    exact = float(singular_values(explicit_operator(layer, (4, 6, 6)))[0])
    bound, _ = module_bound(layer, (4, 6, 6))
    assert bound == pytest.approx(exact, rel=1e-9) and bound == pytest.approx(1.0, rel=1e-9)


def test_batchnorm_linear_pooling_rules_are_exact_or_above():
    gen = torch.Generator().manual_seed(3)
    bn = nn.BatchNorm2d(3).to(DT).eval()
    bn.running_var.copy_(torch.tensor([0.5, 2.0, 0.1], dtype=DT))
    bn.weight.data = torch.tensor([1.0, -3.0, 0.2], dtype=DT)
    assert module_bound(bn, (3, 4, 4))[0] == pytest.approx(float(singular_values(explicit_operator(
        lambda x: bn(x) - bn(torch.zeros_like(x)), (3, 4, 4)))[0]))
    avg = nn.AdaptiveAvgPool2d(1)
    assert module_bound(avg, (2, 5, 4))[0] == pytest.approx(1 / math.sqrt(20))
    pool = nn.AvgPool2d(3, stride=2, padding=1)
    exact = float(singular_values(explicit_operator(pool, (1, 7, 7)))[0])
    assert exact <= module_bound(pool, (1, 7, 7))[0] * (1 + 1e-12)
    lin = nn.Linear(5, 3).to(DT)
    lin.weight.data = torch.randn(3, 5, generator=gen, dtype=DT)
    assert module_bound(lin, (5,))[0] == pytest.approx(float(singular_values(lin.weight.detach())[0]))


def test_unknown_module_gives_no_certificate_and_a_warning_naming_it():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Hardshrink(), nn.Linear(4, 2))
    bound = network_bound(net, (3, 2, 2))
    assert bound.value is None
    assert any("Hardshrink" in w for w in bound.warnings), bound.warnings


class Square(nn.Module):
    def forward(self, x):
        return x * x


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:   # data-dependent control flow: torch.fx cannot trace it
            return self.lin(x.flatten(1))
        return -self.lin(x.flatten(1))


def test_products_of_the_input_and_untraceable_forwards_are_refused():
    bound = network_bound(nn.Sequential(nn.Flatten(), Square()), (1, 2, 2))
    assert bound.value is None and any("mul" in w for w in bound.warnings)
    bound = network_bound(Untraceable(), (1, 2, 2))
    assert bound.value is None and any("Untraceable" in w for w in bound.warnings)


class OneLipschitzBlock(nn.Module):
    """Stands for a 1-Lipschitz layer of another engineer: its own bound; its
    child is unboundable, so the test sees that children are not visited."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Hardshrink()

    def lipschitz_bound(self) -> float:
        return 0.5

    def forward(self, x):
        return 0.5 * torch.tanh(x)


def test_a_module_with_lipschitz_bound_is_bounded_by_it_before_any_rule():
    net = nn.Sequential(nn.Flatten(), OneLipschitzBlock(), nn.Linear(4, 2, bias=False))
    net[2].weight.data = torch.tensor([[3.0, 0, 0, 0], [0, 0, 0, 0]])
    bound = network_bound(net, (1, 2, 2))
    assert bound.value == pytest.approx(1.5)
    assert any(p["rule"] == "lipschitz_bound()" and p["type"] == "OneLipschitzBlock" for p in bound.parts)

    class Broken(OneLipschitzBlock):
        def lipschitz_bound(self):
            return float("nan")

    bad = network_bound(nn.Sequential(nn.Flatten(), Broken()), (1, 2, 2))
    assert bad.value is None and any("Broken" in w for w in bad.warnings)


def test_a_subclass_with_its_own_forward_is_not_bounded_by_its_base_rule():
    class Doubled(nn.BatchNorm2d):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(Unbounded):
        module_bound(Doubled(2).eval(), (2, 3, 3))

    class Shifted(nn.Conv2d):   # the conv rule checks the operator itself
        def forward(self, x):
            return super().forward(x) * 3

    with pytest.raises(Unbounded, match="not conv2d"):
        module_bound(Shifted(2, 2, 3, padding=1), (2, 5, 5))


def test_padded_circular_bound_rounds_the_grid_up_to_the_stride():
    w = torch.randn(2, 2, 3, 3, dtype=DT)
    conv = nn.Conv2d(2, 2, 3, stride=2, padding=1, bias=False).to(DT)
    conv.weight.data = w
    exact = float(singular_values(explicit_operator(conv, (2, 5, 5)))[0])
    assert exact <= padded_circular_bound(w, (5, 5), (1, 1, 1, 1), 2) * (1 + 1e-12)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4, bias=False)
        self.lin.weight.data = torch.eye(4)

    def forward(self, x):
        x = x.flatten(1)
        return self.lin(x) + x


def test_a_residual_sum_adds_the_bounds_of_its_branches_where_that_is_tight():
    # x + I x = 2x: the bound must be 2 (a rule taking the larger branch would say 1)
    net = Residual()
    bound = network_bound(net, (1, 2, 2))
    assert bound.value == pytest.approx(2.0)
    assert jacobian_norm(net.double(), torch.rand(1, 2, 2, dtype=DT)) == pytest.approx(2.0)


class ViewBySize(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x.view(x.size(0), -1)) + 0 * x.shape[0]


def test_shape_queries_are_constants():
    bound = network_bound(ViewBySize(), (1, 2, 2))
    assert bound.value is not None, bound.warnings


class RaisingBound(nn.Module):
    def lipschitz_bound(self):
        raise RuntimeError("boom")

    def forward(self, x):
        return x


def test_a_rule_that_fails_means_no_bound_and_a_warning_not_a_crash():
    bound = network_bound(nn.Sequential(nn.Flatten(), RaisingBound()), (1, 2, 2))
    assert bound.value is None and any("boom" in w for w in bound.warnings)
