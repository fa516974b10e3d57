"""BCOP: the explicit operator (circular) is orthogonal; zero padding keeps
it at most 1; ``lipschitz_bound`` is sound and tight; an unorthogonalized
matrix is caught."""
import pytest
import torch

from lipschitz_layer_util import TINY_LIPCONVNET, conv_singular_values, trains_in
from robustbench_convnorm.normalizers import bcop as bcop_module


@pytest.mark.parametrize("c_in,c_out,k,stride", [(4, 4, 3, 1), (3, 5, 3, 1), (5, 3, 3, 1), (2, 8, 3, 2),
                                                 (2, 4, 1, 2), (4, 4, 5, 1)])
def test_circular_layer_is_orthogonal(c_in, c_out, k, stride):
    sv, m, layer = conv_singular_values("bcop", c_in, c_out, k, stride)
    rank = min(m.shape)
    assert torch.allclose(sv[:rank], torch.ones(rank, dtype=sv.dtype), atol=1e-9)
    assert float(sv.max()) <= layer.lipschitz_bound() + 1e-12 and layer.lipschitz_bound() < 1 + 1e-9


def test_zero_padding_is_at_most_one():
    sv, _, layer = conv_singular_values("bcop", 4, 4, 3, padding_mode="zeros")
    assert float(sv.max()) <= 1 + 1e-9 and float(sv.min()) < 0.99  # not orthogonal at the borders


def test_missing_bjorck_is_caught(monkeypatch):
    """Planted defect: the matrices used as they are, not orthogonalized."""
    monkeypatch.setattr(bcop_module, "bjorck", lambda w, iterations: w)
    sv, _, layer = conv_singular_values("bcop", 4, 4, 3)
    with torch.no_grad():
        layer.ortho.mul_(2.0)
    from operators import explicit_operator, singular_values
    sv = singular_values(explicit_operator(layer, (4, 6, 6)))
    assert float(sv.max()) > 1.5
    assert layer.lipschitz_bound() >= float(sv.max()) - 1e-9  # the bound stays sound


def test_bad_padding_mode_is_refused():
    from robustbench_convnorm.normalizers import get_normalizer
    with pytest.raises(ValueError, match="padding_mode"):
        get_normalizer("bcop", padding_mode="reflect")


@pytest.mark.parametrize("arch,options", [("lipconvnet", TINY_LIPCONVNET), ("resnet18", {"width": 0.125})])
def test_trains(arch, options):
    trains_in("bcop", arch, **options)
