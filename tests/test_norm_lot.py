"""LOT: per-frequency Newton–Schulz orthogonalization makes the explicit
operator orthogonal within the iteration's error (never above 1);
``lipschitz_bound`` is the exact per-frequency value; a wrong Newton step is caught."""
import pytest
import torch

from lipschitz_layer_util import TINY_LIPCONVNET, conv_singular_values, trains_in
from operators import explicit_operator, singular_values
from robustbench_convnorm.normalizers import get_normalizer, lipschitz_ops


@pytest.mark.parametrize("c_in,c_out,k,stride", [(4, 4, 3, 1), (3, 5, 3, 1), (5, 3, 3, 1), (2, 8, 3, 2)])
def test_orthogonal_within_iteration_error(c_in, c_out, k, stride):
    sv, m, layer = conv_singular_values("lot", c_in, c_out, k, stride, iterations=40)
    rank = min(m.shape)
    assert float(sv.max()) <= 1 + 1e-9
    assert float(sv[:rank].min()) >= 1 - 1e-9
    assert abs(layer.lipschitz_bound() - float(sv.max())) < 1e-9  # exact per-frequency check


def test_few_iterations_stay_below_one_and_the_bound_is_the_exact_norm():
    sv, _, layer = conv_singular_values("lot", 4, 4, 3, iterations=3)
    assert float(sv.max()) <= 1 + 1e-9
    assert abs(layer.lipschitz_bound() - float(sv.max())) < 1e-9


def test_a_wrong_newton_step_is_caught(monkeypatch):
    """Planted defect: T = 3I - ZY without the factor 1/2."""
    def wrong(y, z, eye):
        t = 3.0 * eye - z @ y
        return y @ t, t @ z
    monkeypatch.setattr(lipschitz_ops, "newton_schulz_step", wrong)
    layer = get_normalizer("lot", iterations=40).conv(4, 4, 3, padding=1).double().eval()
    m = explicit_operator(layer, (4, 6, 6))
    # The norm test's check (finite, every singular value 1) fails: here it diverges.
    assert not torch.isfinite(m).all() or not torch.allclose(singular_values(m), torch.ones(144, dtype=m.dtype),
                                                             atol=1e-6)


def test_lipschitz_bound_needs_a_forward_first_and_survives_a_state_dict():
    layer = get_normalizer("lot").conv(4, 4, 3, padding=1)
    with pytest.raises(RuntimeError, match="forward"):
        layer.lipschitz_bound()
    layer(torch.randn(1, 4, 6, 6))
    fresh = get_normalizer("lot").conv(4, 4, 3, padding=1)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.lipschitz_bound() == pytest.approx(layer.lipschitz_bound(), abs=1e-12)


@pytest.mark.parametrize("arch,options", [("lipconvnet", TINY_LIPCONVNET), ("resnet18", {"width": 0.125})])
def test_trains(arch, options):
    trains_in("lot", arch, **options)
