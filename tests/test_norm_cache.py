"""The caches of ConvNorm's filter V and Cayley's Q against weights that change
without bumping their version counter: edits through ``.data`` and the fused
CPU kernels of SGD and Adam (called directly, without any help from speed.py).
After each change the next forward must equal that of a fresh layer holding
the new weights. Each mechanism is also checked alone: the optimizer-step
count on a device whose reuse is checked lazily, and that lazy check itself
(NaN, then a clear error) for ``.data`` edits there."""
import copy
import io

import pytest
import torch

from robustbench_convnorm.normalizers import convnorm as convnorm_module
from robustbench_convnorm.normalizers import weight_cache
from robustbench_convnorm.normalizers.cayley import CayleyConv2d
from robustbench_convnorm.normalizers.convnorm import ConvNorm2d
from robustbench_convnorm.normalizers.lot import LOTConv2d
from robustbench_convnorm.normalizers.weight_cache import StaleCacheError

# "cayley-strided" takes the direct route of 1x1 kernels (Q cached at one
# frequency); LOT shares Cayley's cache without alpha.
LAYERS = pytest.mark.parametrize("kind", ["convnorm-plain", "convnorm-fast", "cayley", "cayley-strided", "lot"])
OPTIMIZERS = pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, fused=True),
    lambda p: torch.optim.Adam(p, lr=0.1, fused=True),
], ids=["fused-sgd", "fused-adam"])


def _layer(kind):
    if kind == "cayley":
        return CayleyConv2d(3, 4, 3, 1, 1)
    if kind == "cayley-strided":
        return CayleyConv2d(3, 4, 3, 2, 1)
    if kind == "lot":
        return LOTConv2d(3, 4, 3, 1, 1)
    layer = ConvNorm2d(3, 4, 3, 1, 1, eval_filter="exact", affine=False)
    layer.fast_path = kind == "convnorm-fast"
    return layer


def _cache_of(layer):
    return layer._cache if isinstance(layer, CayleyConv2d) else layer._filter_cache


def _fresh_output(layer, x):
    """The output of an uncached copy: what the layer must give now."""
    twin = copy.deepcopy(layer)
    twin.clear_cache()
    with torch.no_grad():
        return twin(x)


def _edit_through_data(layer):
    with torch.no_grad():
        layer.weight.data.add_(0.3 * torch.randn_like(layer.weight))
        if isinstance(layer, CayleyConv2d) and layer.alpha is not None:
            layer.alpha.data.mul_(0.5)


@LAYERS
def test_edit_through_data_reaches_the_next_forward(kind):
    layer = _layer(kind).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = layer(x)
        torch.testing.assert_close(layer(x), before, rtol=0, atol=0)  # served from the cache
        version = layer.weight._version
        _edit_through_data(layer)
        assert layer.weight._version == version  # invisible to the version counter
        after = layer(x)
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(after, _fresh_output(layer, x), rtol=0, atol=0)


def _fused_step(layer, make_optimizer):
    """One fused optimizer step on made-up gradients (no forward in between, no
    mode switch: nothing else that could drop a cache)."""
    opt = make_optimizer(list(layer.parameters()))
    for p in layer.parameters():
        p.grad = torch.randn_like(p)
    version = layer.weight._version
    opt.step()
    assert layer.weight._version == version  # the fused kernel leaves the counter alone


@LAYERS
@OPTIMIZERS
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_fused_optimizer_step_reaches_the_next_forward(kind, make_optimizer, training):
    layer = _layer(kind).train(training)
    x = torch.randn(2, 3, 8, 8)
    for _ in range(2):
        with torch.no_grad():  # Cayley caches under no_grad (or in eval mode) only
            before = layer(x)
        _fused_step(layer, make_optimizer)
        with torch.no_grad():
            after = layer(x)
        assert not torch.allclose(after, before, atol=1e-3)
        torch.testing.assert_close(after, _fresh_output(layer, x), rtol=0, atol=0)


@pytest.fixture
def lazily_checked(monkeypatch):
    """Treat the CPU as an accelerator: reuse is checked on the device, read later."""
    monkeypatch.setattr(weight_cache, "HOST_CHECKED_DEVICES", set())


@LAYERS
@OPTIMIZERS
def test_optimizer_steps_alone_invalidate_where_checks_are_lazy(kind, make_optimizer, lazily_checked):
    layer = _layer(kind).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        layer(x)
        _fused_step(layer, make_optimizer)
        out = layer(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, _fresh_output(layer, x), rtol=0, atol=0)


@LAYERS
def test_data_edit_where_checks_are_lazy_gives_nan_then_a_clear_error(kind, lazily_checked):
    layer = _layer(kind).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        layer(x)
        assert torch.isfinite(layer(x)).all()  # an unchanged reuse passes the device check
        assert torch.isfinite(layer(x)).all()
        _edit_through_data(layer)
        assert torch.isnan(layer(x)).all()  # never a plausible stale number
        with pytest.raises(StaleCacheError, match=r"\.data"):
            layer(x)
        # The error dropped the cache: the layer works again, with the new weights.
        torch.testing.assert_close(layer(x), _fresh_output(layer, x), rtol=0, atol=0)


def test_checks_recompute_only_after_a_change(monkeypatch):
    # The checks must not turn every reuse into a recomputation.
    calls = []
    real = convnorm_module.kernel_rfft2
    monkeypatch.setattr(convnorm_module, "kernel_rfft2", lambda *a: calls.append(1) or real(*a))
    layer = _layer("convnorm-plain").eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for _ in range(3):
            layer(x)
        assert len(calls) == 1
        _edit_through_data(layer)
        for _ in range(3):
            layer(x)
    assert len(calls) == 2


@LAYERS
def test_copies_and_pickles_start_with_an_empty_cache(kind):
    layer = _layer(kind).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = layer(x)
    cache = _cache_of(layer)
    assert len(cache) == 1
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    for twin in (copy.deepcopy(layer), torch.load(buffer, weights_only=False)):
        twin_cache = _cache_of(twin)
        assert len(twin_cache) == 0 and twin_cache is not cache
        with torch.no_grad():
            torch.testing.assert_close(twin(x), expected, rtol=0, atol=0)
