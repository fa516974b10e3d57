"""CPL: with a converged power iteration the residual layer's Jacobian has
norm <= 1 (dense SVD); ``lipschitz_bound`` is a sound upper bound of it; a
missing rescaling is caught; the u buffer follows the input size through a
state-dict round trip."""
import io

import pytest
import torch

from lipschitz_layer_util import TINY_LIPCONVNET, jacobian_norms, trains_in
from robustbench_convnorm.normalizers import cpl as cpl_module
from robustbench_convnorm.normalizers import get_normalizer


def _block(scale=3.0):
    torch.manual_seed(0)
    block = get_normalizer("cpl").block(4, 3).double()
    with torch.no_grad():
        block.kernel.mul_(scale)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    block.train()
    for _ in range(50):  # training steps converge the persistent u
        block(x)
    return block.eval()


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_jacobian_norm_at_most_one_and_bound_sound(scale):
    block = _block(scale)
    norms = jacobian_norms(block)
    assert max(norms) <= 1 + 1e-6
    assert block.lipschitz_bound() >= max(norms) - 1e-9
    assert block.lipschitz_bound() < 1.02  # tight: the exact dense norm at this size


def test_the_circular_bound_is_sound_for_the_zero_padded_conv():
    block = _block(3.0)
    k = block.kernel
    exact = cpl_module.zero_padded_norm_squared(k, 5, 5)
    assert cpl_module.circular_norm_squared(k, 6, 6) >= exact - 1e-9
    from operators import explicit_operator, singular_values
    conv = lambda x: torch.nn.functional.conv2d(x, k.detach(), padding=1)
    assert exact == pytest.approx(float(singular_values(explicit_operator(conv, (4, 5, 5))).max()) ** 2)


def test_a_missing_rescaling_is_caught(monkeypatch):
    """Planted defect: the factor 2 / sigma^2 replaced by 2."""
    block = _block(3.0)
    monkeypatch.setattr(type(block), "rescaling", lambda self, x: torch.tensor(2.0, dtype=x.dtype))
    assert max(jacobian_norms(block)) > 1.5


def test_u_follows_the_input_size_through_a_state_dict():
    block = _block(1.0)
    buf = io.BytesIO()
    torch.save(block.state_dict(), buf)
    buf.seek(0)
    fresh = get_normalizer("cpl").block(4, 3).double()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.u.shape == (1, 4, 5, 5)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(fresh.eval()(x), block(x))
    fresh = get_normalizer("cpl").block(4, 3).double()
    fresh.load_state_dict(block.state_dict())
    assert fresh.lipschitz_bound() == pytest.approx(block.lipschitz_bound())  # size from u


@pytest.mark.parametrize("arch,options", [("lipconvnet", TINY_LIPCONVNET), ("resnet18", {"width": 0.125})])
def test_trains(arch, options):
    trains_in("cpl", arch, **options)
