"""SLL: the residual layer's Jacobian has norm <= 1 at random points (dense
SVD) for kernels of any scale; a missing rescaling is caught; the
normalizer builds blocks (``block``) and trains in the ConvNet family."""
import warnings

import pytest
import torch

from lipschitz_layer_util import TINY_LIPCONVNET, jacobian_norms, trains_in
from robustbench_convnorm.models import build_model
from robustbench_convnorm.normalizers import get_normalizer
from robustbench_convnorm.normalizers import sll as sll_module
from robustbench_convnorm.normalizers.sll import SLLBlock


def _block(scale=3.0, k=3):
    torch.manual_seed(0)
    block = get_normalizer("sll").block(4, k).double()
    with torch.no_grad():
        block.kernel.mul_(scale)
        block.log_q.normal_()  # any q > 0
    return block


@pytest.mark.parametrize("scale,k", [(1.0, 3), (3.0, 3), (10.0, 1)])
def test_jacobian_norm_at_most_one(scale, k):
    block = _block(scale, k)
    assert max(jacobian_norms(block)) <= 1 + 1e-9
    assert block.lipschitz_bound() == 1.0


def test_a_missing_rescaling_is_caught(monkeypatch):
    """Planted defect: T = I (no rescaling) with the factor 2 kept."""
    monkeypatch.setattr(sll_module, "sll_rescaling", lambda k, q, eps: torch.full((k.shape[0],), 2.0,
                                                                                    dtype=k.dtype))
    assert max(jacobian_norms(_block(3.0))) > 1.5


def test_block_is_the_seam_and_conv_is_a_bounded_conv():
    normalizer = get_normalizer("sll")
    assert isinstance(normalizer.block(8), SLLBlock)
    assert get_normalizer("vanilla").block(8) is None  # the default: conv + activation
    model = build_model("lipconvnet", normalizer, num_classes=4, in_channels=1, mean=[0.5], std=[0.25],
                        batchnorm=False, **TINY_LIPCONVNET)
    assert sum(isinstance(m, SLLBlock) for m in model.modules()) == 1 + 3 + 1  # stem, 3 stages, head


@pytest.mark.parametrize("arch,options", [("lipconvnet", TINY_LIPCONVNET), ("resnet18", {"width": 0.125})])
def test_trains(arch, options):
    trains_in("sll", arch, **options)


@pytest.mark.parametrize("name", ["sll", "cpl"])
def test_a_plain_conv_architecture_gets_aols_layer_and_is_told(name):
    """SLL and CPL have no convolution of their own: a ConvNet of plain convs
    builds AOL's layer (the same function as 'aol' from the same seed), and
    says so, since a grid with both compares one layer with itself (the first
    equal-compute grid did). An architecture of whole layers warns nothing."""
    def convnet(normalizer):
        torch.manual_seed(0)
        return build_model("convnet", get_normalizer(normalizer), num_classes=4, in_channels=1, mean=[0.5],
                           std=[0.25], batchnorm=False, width=0.25).eval()

    with pytest.warns(UserWarning, match=f"{name}: .*AOL's rescaled convolution"):
        model = convnet(name)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(model(x), convnet("aol")(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model("lipconvnet", get_normalizer(name), num_classes=4, in_channels=1, mean=[0.5], std=[0.25],
                    batchnorm=False, **TINY_LIPCONVNET)
