"""ONI against a closed form: W = g * (Zc Zc^T + eps I)^-1/2 Zc (row form) or
g * Zc (Zc^T Zc + eps I)^-1/2 (column form), from an eigendecomposition."""
import torch

from robustbench_convnorm.normalizers import get_normalizer


def _inv_sqrt(s):
    evals, evecs = torch.linalg.eigh(s)
    return evecs @ torch.diag(evals.rsqrt()) @ evecs.T


def _free(layer):
    return layer.parametrizations.weight.original.detach()


def test_rows_orthonormal_times_g_for_large_T():
    layer = get_normalizer("oni", T=10, eps=1e-9).conv(2, 6, 3, stride=2, padding=1).double()
    z = _free(layer).reshape(6, -1)
    assert z.shape[0] <= z.shape[1]  # the row form
    w = layer.weight.detach().reshape(6, -1)
    g = 1.414
    torch.testing.assert_close(w @ w.T, g ** 2 * torch.eye(6, dtype=w.dtype), atol=1e-7, rtol=0)
    zc = z - z.mean(dim=1, keepdim=True)
    expected = g * _inv_sqrt(zc @ zc.T + 1e-9 * torch.eye(6, dtype=z.dtype)) @ zc
    torch.testing.assert_close(w, expected, atol=1e-7, rtol=0)
    # The rows are centred: without centring the closed form would differ.
    assert not torch.allclose(w, g * _inv_sqrt(z @ z.T) @ z, atol=1e-3)


def test_column_form_when_more_filters_than_entries():
    layer = get_normalizer("oni", T=10, eps=1e-9).conv(1, 12, 3, padding=1).double()
    z = _free(layer).reshape(12, -1)
    d = z.shape[1]
    assert z.shape[0] > d  # the column form
    zc = z - z.mean(dim=1, keepdim=True)
    w = layer.weight.detach().reshape(12, -1)
    g = 1.414
    expected = g * zc @ _inv_sqrt(zc.T @ zc + 1e-9 * torch.eye(d, dtype=z.dtype))
    torch.testing.assert_close(w, expected, atol=1e-5, rtol=0)
    # Columns orthonormal, except along the all-ones direction that centring removes.
    ones = torch.ones(d, 1, dtype=w.dtype) / d ** 0.5
    torch.testing.assert_close(w.T @ w, g ** 2 * (torch.eye(d, dtype=w.dtype) - ones @ ones.T), atol=1e-5, rtol=0)


def test_default_T_is_close_to_orthonormal_and_never_above_g():
    layer = get_normalizer("oni").conv(16, 32, 3, stride=1, padding=1)
    sv = torch.linalg.svdvals(layer.weight.detach().reshape(32, -1)) / 1.414
    assert sv.max() <= 1 + 1e-5  # Newton steps from below never overshoot
    assert sv.min() >= 0.9 and sv.mean() >= 0.98
    few = get_normalizer("oni", T=1).conv(16, 32, 3, stride=1, padding=1)
    few.parametrizations.weight.original.data.copy_(layer.parametrizations.weight.original.data)
    assert torch.linalg.svdvals(few.weight.detach().reshape(32, -1)).min() / 1.414 < 0.9  # T matters


def test_groups_are_orthogonalized_separately():
    layer = get_normalizer("oni", T=10, eps=1e-9, groups=2).conv(4, 8, 3, padding=1).double()
    w = layer.weight.detach().reshape(8, -1) / 1.414
    gram = w @ w.T
    torch.testing.assert_close(gram[:4, :4], torch.eye(4, dtype=w.dtype), atol=1e-7, rtol=0)
    torch.testing.assert_close(gram[4:, 4:], torch.eye(4, dtype=w.dtype), atol=1e-7, rtol=0)
    assert gram[:4, 4:].abs().max() > 1e-3  # no orthogonality across groups


def test_scale_is_a_buffer_or_a_learnable_parameter():
    fixed = get_normalizer("oni").conv(3, 4, 3, padding=1)
    assert "parametrizations.weight.0.scale" in dict(fixed.named_buffers())
    learn = get_normalizer("oni", learnable_scale=True, scale=2.0).conv(3, 4, 3, padding=1)
    params = dict(learn.named_parameters())
    assert "parametrizations.weight.0.scale" in params
    learn(torch.randn(2, 3, 6, 6)).square().sum().backward()
    assert params["parametrizations.weight.0.scale"].grad.abs().sum() > 0
    sv = torch.linalg.svdvals(learn.weight.detach().reshape(4, -1))
    assert abs(sv.max() - 2.0) < 1e-3
