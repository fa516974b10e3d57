"""AOL: every singular value of the explicit operator <= 1 for any kernel,
the rescaling is what makes it so, and it trains in the ConvNet family and ResNet-18."""
import pytest
import torch

from operators import explicit_operator, singular_values
from lipschitz_layer_util import TINY_LIPCONVNET, conv_singular_values, trains_in
from robustbench_convnorm.normalizers import aol as aol_module


@pytest.mark.parametrize("c_in,c_out,k,stride", [(4, 4, 3, 1), (3, 5, 3, 1), (5, 3, 3, 2), (4, 6, 1, 2)])
@pytest.mark.parametrize("identity_init", [True, False])
def test_operator_norm_at_most_one(c_in, c_out, k, stride, identity_init):
    sv, _, layer = conv_singular_values("aol", c_in, c_out, k, stride, identity_init=identity_init)
    assert float(sv.max()) <= 1 + 1e-9
    assert layer.lipschitz_bound() == 1.0


def test_large_kernels_are_still_bounded_and_near_orthogonal_kernels_stay_near_orthogonal():
    sv, _, layer = conv_singular_values("aol", 4, 4, 3, identity_init=False)
    with torch.no_grad():
        layer.weight.mul_(100.0)  # the rescaling is scale-free
    assert float(singular_values(explicit_operator(layer, (4, 6, 6))).max()) <= 1 + 1e-9
    sv, _, _ = conv_singular_values("aol", 4, 4, 3, identity_init=True)
    assert float(sv.min()) > 0.9  # identity init: almost orthogonal


def test_a_missing_rescaling_is_caught(monkeypatch):
    """Planted defect: no rescaling. The same kernel's operator then exceeds norm 1."""
    monkeypatch.setattr(aol_module, "aol_rescaling", lambda w, eps: torch.ones(w.shape[1], dtype=w.dtype))
    _, _, layer = conv_singular_values("aol", 4, 4, 3, identity_init=False)
    with torch.no_grad():
        layer.weight.mul_(10.0)
    assert float(singular_values(explicit_operator(layer, (4, 6, 6))).max()) > 1.5


@pytest.mark.parametrize("arch,options", [("lipconvnet", TINY_LIPCONVNET), ("resnet18", {"width": 0.125})])
def test_trains(arch, options):
    trains_in("aol", arch, **options)
