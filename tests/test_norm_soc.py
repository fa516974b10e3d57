"""SOC: the explicit operator is orthogonal up to the truncation of the
series, within the tail bound ``lipschitz_bound`` reports; a non-skew kernel
is caught; it trains in the ConvNet family and ResNet-18."""
import pytest

from lipschitz_layer_util import TINY_LIPCONVNET, conv_singular_values, trains_in
from operators import explicit_operator, singular_values
from robustbench_convnorm.normalizers import soc as soc_module


@pytest.mark.parametrize("c_in,c_out,k,stride", [(4, 4, 3, 1), (3, 5, 3, 1), (2, 8, 3, 2), (2, 4, 1, 2)])
def test_orthogonal_within_the_truncation_bound(c_in, c_out, k, stride):
    sv, m, layer = conv_singular_values("soc", c_in, c_out, k, stride)
    rank = min(m.shape)
    for training in (True, False):
        layer.train(training)
        sv = singular_values(explicit_operator(layer, (c_in, 6, 6)))
        assert float(sv.max()) <= layer.lipschitz_bound() + 1e-12
        # ||S_n(L) - exp(L)|| <= the tail, so every singular value is within it of 1
        # (a tall layer has its input's rank, the wide ones their output's).
        tail = soc_module.truncation_tail(layer.correction, layer.terms)
        assert float(sv[:rank].min()) >= 1 - tail - 1e-12
    assert layer.lipschitz_bound() - 1 < 1e-9   # 12 evaluation terms


@pytest.mark.parametrize("terms", [3, 6, 7])
def test_the_bound_covers_truncations_that_exceed_one(terms):
    """With 3, 6 or 7 terms |p_n(i theta)| rises above 1; the dense norm stays under the bound."""
    sv, _, layer = conv_singular_values("soc", 4, 4, 3, train_terms=terms, correction=1.0)
    layer.train()
    measured = float(singular_values(explicit_operator(layer, (4, 6, 6))).max())
    assert measured <= layer.lipschitz_bound() + 1e-12
    assert layer.lipschitz_bound() > 1 and measured > 1 + 1e-7  # the excess is real and reported


def test_truncation_excess_shrinks_with_terms():
    tails = [soc_module.truncation_tail(0.7, n) for n in (3, 5, 8, 12)]
    assert tails == sorted(tails, reverse=True) and tails[-1] < 1e-9
    # the exact worst case at ||L|| = 0.7 (docs/normalizers.md): 4 and 5 terms never exceed 1
    assert soc_module.truncated_series_norm(0.7, 5) < 1 + 1e-4
    assert soc_module.truncated_series_norm(0.7, 6) == pytest.approx(1 + 1.343e-4, abs=5e-5)


def test_a_non_skew_kernel_is_caught(monkeypatch):
    """Planted defect: M = W instead of W - conv_transpose(W)."""
    monkeypatch.setattr(soc_module, "skew_kernel", lambda w: w)
    sv, _, layer = conv_singular_values("soc", 4, 4, 3)
    assert float(sv.max()) > layer.lipschitz_bound() + 1e-3


@pytest.mark.parametrize("arch,options", [("lipconvnet", TINY_LIPCONVNET), ("resnet18", {"width": 0.125})])
def test_trains(arch, options):
    trains_in("soc", arch, **options)
