"""The architectures of issue 22: the comparison paper's ConvNet family
(lipconvnet) generic over the layer, its 1-Lipschitz parts, PreAct-ResNet-18
and WideResNet through the normalizer seams; model options from the config."""
import pytest
import torch
from torch.autograd.functional import jacobian

from operators import explicit_operator, singular_values
from robustbench_convnorm.models import build_model, list_models
from robustbench_convnorm.models.activations import GroupSort, MaxMin
from robustbench_convnorm.models.lipconvnet import SIZES, Downsample, FirstLogits, ZeroChannelPad
from robustbench_convnorm.normalizers import NORMALIZERS, get_normalizer, list_normalizers

BUILTIN = sorted(n for n in list_normalizers()
                 if NORMALIZERS.get(n).__module__.startswith("robustbench_convnorm.normalizers."))
TINY = dict(stages=3, width=0.125, layers_per_stage=1)


def _build(arch, name="vanilla", in_channels=1, **options):
    torch.manual_seed(0)
    return build_model(arch, get_normalizer(name), num_classes=4, in_channels=in_channels,
                       mean=[0.5] * in_channels, std=[0.25] * in_channels, batchnorm=False, **options)


def test_the_new_architectures_are_registered():
    assert {"lipconvnet", "preact_resnet18", "wide_resnet"} <= set(list_models())


@pytest.mark.parametrize("name", BUILTIN)
def test_lipconvnet_builds_with_every_normalizer(name):
    model = _build("lipconvnet", name, **TINY)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 4)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_sizes_give_the_papers_widths(size):
    # at 32 x 32 pixels (5 stages): base width = SIZES[size], head width 32 x that
    model = build_model("lipconvnet", get_normalizer("vanilla"), num_classes=10, in_channels=3,
                        mean=[0.5] * 3, std=[0.25] * 3, batchnorm=False, size=size, layers_per_stage=1)
    assert model.pad.channels == SIZES[size]
    assert model.head.in_channels == 32 * SIZES[size]
    assert len(model.stages) == 5


def test_parameter_free_parts_are_1_lipschitz_as_they_say():
    for part, shape in [(Downsample(), (4, 4, 4)), (ZeroChannelPad(6), (3, 4, 4)), (FirstLogits(3), (5, 1, 1))]:
        sv = singular_values(explicit_operator(part, shape))
        assert float(sv.max()) <= 1 + 1e-12 and part.lipschitz_bound() == 1.0
    x = torch.randn(4, 6, 3, 3)
    for act in (MaxMin(), GroupSort(3)):
        y = act(x)
        # a permutation of each example's entries: norms and sorted values kept
        torch.testing.assert_close(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
        assert act.lipschitz_bound() == 1.0


def test_a_1_lipschitz_network_is_bounded_by_the_product_of_its_parts():
    """AOL layers: the network's Jacobian norm is at most InputNormalize's 1/std."""
    model = _build("lipconvnet", "aol", **TINY).double().eval()
    bound = model.normalize.lipschitz_bound()
    assert bound == pytest.approx(4.0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.rand(64, generator=gen, dtype=torch.float64)
        jac = jacobian(lambda z: model(z.view(1, 1, 8, 8)).flatten(), x)
        assert float(torch.linalg.svdvals(jac).max()) <= bound + 1e-9


def test_lipconvnet_refuses_batchnorm_and_a_wrong_stage_count():
    with pytest.raises(ValueError, match="BatchNorm"):
        build_model("lipconvnet", get_normalizer("vanilla"), num_classes=4, in_channels=1, mean=[0.5],
                    std=[0.25], batchnorm=True)
    model = _build("lipconvnet", **{**TINY, "stages": 2})
    with pytest.raises(ValueError, match="stages"):
        model(torch.rand(1, 1, 8, 8))


@pytest.mark.parametrize("arch,options", [("preact_resnet18", {"width": 0.125}),
                                          ("wide_resnet", {"width": 0.125, "depth": 10, "widen_factor": 2})])
@pytest.mark.parametrize("name", ["vanilla", "cayley", "aol"])
def test_preact_and_wide_resnets_build_through_the_normalizer(arch, options, name):
    model = _build(arch, name, in_channels=3, **options)
    convs = [m for m in model.modules() if getattr(m, "conv_role", None)]
    assert convs and {"stem", "block_conv1", "block_conv2", "shortcut"} <= {m.conv_role for m in convs}
    out = model(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 4)
    out.sum().backward()


@pytest.mark.parametrize("arch,options", [("preact_resnet18", {"width": 0.125}),
                                          ("wide_resnet", {"width": 0.125, "depth": 10, "widen_factor": 2})])
def test_activation_is_a_model_option(arch, options):
    model = _build(arch, "vanilla", in_channels=3, activation="maxmin", **options)
    acts = [m for m in model.modules() if isinstance(m, MaxMin)]
    assert acts and not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 4)
    with pytest.raises(ValueError, match="activation"):
        _build(arch, "vanilla", in_channels=3, activation="swish", **options)


def test_wide_resnet_depth_and_width():
    model = build_model("wide_resnet", get_normalizer("vanilla"), num_classes=10, in_channels=3,
                        mean=[0.5] * 3, std=[0.25] * 3, batchnorm=True, depth=34, widen_factor=10)
    assert [len(s) for s in (model.block1, model.block2, model.block3)] == [5, 5, 5]
    assert model.linear.in_features == 640
    n_params = sum(p.numel() for p in model.parameters())
    assert 46e6 < n_params < 47e6  # WRN-34-10: 46.2M parameters
    with pytest.raises(ValueError, match="6n"):
        _build("wide_resnet", depth=27)


def test_model_options_come_from_the_config():
    from robustbench_convnorm.builders import build_run_model
    from robustbench_convnorm.config import config_from_dict
    cfg = config_from_dict({"model": {"arch": "lipconvnet", "width": 0.125,
                                      "options": {"size": "s", "stages": 3, "layers_per_stage": 1,
                                                  "activation": "groupsort"}},
                            "normalizers": [{"name": "aol"}], "batchnorm": False})
    model = build_run_model(cfg, {"num_classes": 10, "in_channels": 1, "mean": [0.5], "std": [0.25]})
    assert any(isinstance(m, GroupSort) for m in model.modules())
    assert model.head.in_channels == round(32 * 32 * 0.125)


def test_list_shows_every_new_layer_and_architecture_with_options(capsys):
    from robustbench_convnorm import run
    assert run.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name, options in [("aol", "identity_init"), ("soc", "train_terms"), ("lot", "iterations"),
                          ("bcop", "bjorck_iterations"), ("sll", "eps"), ("cpl", "eval_iterations"),
                          ("lipconvnet", "activation"), ("preact_resnet18", "width"), ("wide_resnet", "depth")]:
        block = out.split(f"  {name}:", 1)
        assert len(block) == 2, name
        assert options in block[1].split("\n  ", 2)[1], (name, options)
