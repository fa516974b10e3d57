"""Spectral normalization: the flattened weight's top singular value (dense
SVD) and the power-iteration state."""
import torch

from operators import explicit_operator, singular_values
from robustbench_convnorm.normalizers import get_normalizer


def _flat(weight):
    return weight.detach().reshape(weight.shape[0], -1)


def test_top_singular_value_is_one_after_power_iteration_converges():
    layer = get_normalizer("sn").conv(6, 8, 3, stride=1, padding=1)
    original = layer.parametrizations.weight.original.detach().clone()
    x = torch.randn(2, 6, 5, 5)
    layer.train()
    for _ in range(60):  # one power iteration per training forward
        layer(x)
    sigma_raw = torch.linalg.svdvals(_flat(original))[0]
    assert abs(sigma_raw - 1) > 0.05  # so normalization really had work to do
    sv = torch.linalg.svdvals(_flat(layer.weight))
    assert abs(sv[0] - 1) < 1e-4
    # The normalized weight is the free weight divided by its top singular value.
    torch.testing.assert_close(layer.weight.detach(), original / sigma_raw, rtol=1e-4, atol=1e-6)


def test_u_and_v_do_not_move_in_eval_mode():
    layer = get_normalizer("sn").conv(4, 5, 3, stride=2, padding=1)
    param = layer.parametrizations.weight[0]
    x = torch.randn(2, 4, 8, 8)
    layer.eval()
    u, v, w = param._u.clone(), param._v.clone(), layer.weight.detach().clone()
    for _ in range(3):
        out = layer(x)
    assert torch.equal(param._u, u) and torch.equal(param._v, v)
    assert torch.equal(layer.weight.detach(), w)
    torch.testing.assert_close(out, layer(x), rtol=0, atol=0)
    # In training mode they do move (the check above can fail).
    layer.train()
    with torch.no_grad():
        layer.parametrizations.weight.original.add_(0.5 * torch.randn_like(layer.parametrizations.weight.original))
    layer(x)
    assert not torch.equal(param._u, u)


def test_power_iteration_option_and_operator_bound():
    layer = get_normalizer("sn", n_power_iterations=3).conv(3, 4, 3, stride=1, padding=1)
    assert layer.parametrizations.weight[0].n_power_iterations == 3
    for _ in range(20):
        layer(torch.randn(1, 3, 6, 6))
    layer = layer.double().eval()
    # SN bounds the flattened matrix; the conv operator is bounded by k times that.
    op_norm = singular_values(explicit_operator(layer, (3, 6, 6)))[0]
    assert op_norm <= 3 * torch.linalg.svdvals(_flat(layer.weight))[0] + 1e-9
