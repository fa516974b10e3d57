"""The `tn` normalizer: a plain conv plus the TN-bound penalty."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_convnorm import lipschitz as lip
from robustbench_convnorm.models.common import make_conv
from robustbench_convnorm.models.registry import build_model
from robustbench_convnorm.normalizers import get_normalizer, list_normalizers
from robustbench_convnorm.normalizers.tn import TNConv2d
from robustbench_convnorm.registry import RegistryError


def fresh_bounds(model):
    """The TN bound of every TN conv, recomputed from scratch (float64)."""
    return [lip.tn_bound(m.weight.detach().double(), m.stride, n_iter=300, restarts=5,
                         generator=torch.Generator().manual_seed(0))
            for m in model.modules() if isinstance(m, TNConv2d)]


def small_model(norm):
    return nn.Sequential(make_conv(norm, "plain", 3, 6, 3, 1, 1), nn.ReLU(), make_conv(norm, "plain", 6, 8, 3, 2, 1))


def test_registered_and_a_plain_conv():
    assert "tn" in list_normalizers()
    norm = get_normalizer("tn", beta=0.1, target=1.0)
    conv = norm.conv(3, 5, 3, stride=2, padding=1)
    assert isinstance(conv, TNConv2d) and isinstance(conv, nn.Conv2d)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, None, 2, 1))
    assert conv.tn_u2.shape[1:] == (3 * 4, 2) and conv.tn_u3.shape[1:] == (2, 2)
    with pytest.raises(ValueError):
        get_normalizer("tn", beta=-1.0)
    with pytest.raises(RegistryError):
        get_normalizer("tn", betta=1.0)


def test_penalty_is_beta_times_the_sum_of_tn_bounds():
    torch.manual_seed(1)
    norm = get_normalizer("tn", beta=0.3)
    model = small_model(norm)
    pen = norm.penalty(model)
    assert pen.requires_grad
    assert float(pen.detach()) == pytest.approx(0.3 * sum(fresh_bounds(model)), rel=1e-4)
    pen.backward()
    for m in model.modules():
        if isinstance(m, TNConv2d):
            assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0


def test_hinge_target():
    torch.manual_seed(2)
    bounds = None
    for target, expect_zero in ((100.0, True), (0.0, False)):
        norm = get_normalizer("tn", beta=2.0, target=target)
        torch.manual_seed(2)
        model = small_model(norm)
        bounds = fresh_bounds(model)
        pen = norm.penalty(model)
        if expect_zero:
            assert float(pen.detach()) == 0.0
        else:
            assert float(pen.detach()) == pytest.approx(2.0 * sum(bounds), rel=1e-4)
    # a target between the two layers' bounds only counts the excess of the larger
    lo, hi = sorted(bounds)
    mid = (lo + hi) / 2
    norm = get_normalizer("tn", beta=1.0, target=mid)
    torch.manual_seed(2)
    model = small_model(norm)
    assert float(norm.penalty(model).detach()) == pytest.approx(hi - mid, rel=1e-3)


def test_penalty_steps_lower_the_bound():
    torch.manual_seed(3)
    norm = get_normalizer("tn", beta=1.0)
    model = small_model(norm)
    before = fresh_bounds(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    for _ in range(10):
        opt.zero_grad()
        norm.penalty(model).backward()
        opt.step()
    after = fresh_bounds(model)
    for b, a in zip(before, after):
        assert a < 0.9 * b


def test_it_trains_and_its_bounds_end_lower_than_without_the_penalty():
    x = torch.rand(48, 3, 12, 12)
    y = torch.randint(0, 10, (48,))
    result = {}
    for beta in (0.0, 0.05):
        torch.manual_seed(4)
        norm = get_normalizer("tn", beta=beta)
        model = build_model("convnet", norm, num_classes=10, in_channels=3, mean=[0.5] * 3, std=[0.25] * 3,
                            batchnorm=True, width=0.25)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for _ in range(25):
            ce = F.cross_entropy(model(x), y)
            loss = ce + norm.penalty(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(ce.detach()))
        assert losses[-1] < 0.7 * losses[0]  # it trains
        result[beta] = sum(fresh_bounds(model))
    assert result[0.05] < 0.95 * result[0.0]


def test_state_is_in_the_state_dict_and_a_resumed_model_gives_the_same_penalty():
    torch.manual_seed(5)
    norm = get_normalizer("tn", beta=1.0, restart_every=0)
    model = small_model(norm)
    norm.penalty(model)  # cold start: vectors now set
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(k.endswith("tn_u1") for k in state) and any(k.endswith("tn_ready") for k in state)
    torch.manual_seed(99)
    other = small_model(norm)
    other.load_state_dict(state)
    assert float(norm.penalty(other).detach()) == pytest.approx(float(norm.penalty(model).detach()), rel=1e-6)


def test_no_tn_convs_no_penalty():
    norm = get_normalizer("tn", beta=1.0)
    model = small_model(get_normalizer("vanilla"))
    assert float(norm.penalty(model).detach()) == 0.0
