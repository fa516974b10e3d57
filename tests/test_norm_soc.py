"""SOC: the explicit operator is orthogonal up to the truncation of the
series, within the tail bound ``lipschitz_bound`` reports; a non-skew kernel
is caught; it trains in the ConvNet family and ResNet-18."""
import pytest
import torch

from lipschitz_layer_util import TINY_LIPCONVNET, conv_singular_values, trains_in
from operators import explicit_operator, singular_values
from robustbench_convnorm.normalizers import soc as soc_module


@pytest.mark.parametrize("c_in,c_out,k,stride", [(4, 4, 3, 1), (3, 5, 3, 1), (2, 8, 3, 2), (2, 4, 1, 2)])
def test_orthogonal_within_the_truncation_bound(c_in, c_out, k, stride):
    sv, m, layer = conv_singular_values("soc", c_in, c_out, k, stride)
    for training in (True, False):
        layer.train(training)
        sv = singular_values(explicit_operator(layer, (c_in, 6, 6)))
        excess = layer.lipschitz_bound() - 1
        assert float(sv.max()) <= 1 + excess + 1e-12
        rank = min(m.shape)
        # ||S_n(L) - exp(L)|| <= tail, so every singular value is within the tail of 1
        # (a tall layer has its input's rank, the wide ones their output's).
        assert float(sv[:rank].min()) >= 1 - excess - 1e-12
    assert layer.lipschitz_bound() - 1 < 1e-9   # 12 evaluation terms


def test_truncation_excess_shrinks_with_terms():
    tails = [soc_module.truncation_tail(0.7, n) for n in (3, 5, 8, 12)]
    assert tails == sorted(tails, reverse=True) and tails[-1] < 1e-9


def test_a_non_skew_kernel_is_caught(monkeypatch):
    """Planted defect: M = W instead of W - conv_transpose(W)."""
    monkeypatch.setattr(soc_module, "skew_kernel", lambda w: w)
    sv, _, layer = conv_singular_values("soc", 4, 4, 3)
    assert float(sv.max()) > layer.lipschitz_bound() + 1e-3


@pytest.mark.parametrize("arch,options", [("lipconvnet", TINY_LIPCONVNET), ("resnet18", {"width": 0.125})])
def test_trains(arch, options):
    trains_in("soc", arch, **options)
