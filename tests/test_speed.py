"""The fast path (robustbench_convnorm/speed.py) computes what the plain path computes."""
import contextlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.replay import exact_fp32
from robustbench_convnorm import speed
from robustbench_convnorm.config import ConfigError, SpeedConfig, TrainConfig, config_from_dict, expand_grid
from robustbench_convnorm.models import build_model
from robustbench_convnorm.normalizers import get_normalizer
from robustbench_convnorm.training.loop import autocast_for, make_optimizer
from robustbench_convnorm.training.methods import METHODS
from robustbench_convnorm.training.schedules import make_scheduler

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]
PLAIN = SpeedConfig(channels_last="off", cudnn_benchmark="off", optimizer="for_loop", compile="off",
                    convnorm_fast="off")
#: Every switch that applies to a CPU, on (compile has its own tests below).
FAST_CPU = SpeedConfig(channels_last="on", cudnn_benchmark="off", optimizer="foreach", compile="off",
                       convnorm_fast="on")
#: fp32: relative difference of parameters after a few free-AT replays. The
#: paths differ only in the order of floating-point sums (conv algorithms for
#: the memory format, FFT packing), so they agree to about 1e-6 per step.
TOLERANCE = 1e-4


def free_trainer(normalizer, switches: SpeedConfig, *, width=0.5, batch=6, seed=0, device=CPU):
    """A free-AT trainer of the small ConvNet. Width 0.5 (8-16-32 channels): at 0.25 its
    strided shortcut has 4 input channels, where channels_last is turned off on the CPU
    (speed.for_model), which would leave the switch untested here."""
    torch.manual_seed(seed)
    norm = get_normalizer(normalizer)
    model = build_model("convnet", norm, num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3,
                        batchnorm=False, width=width).to(device)
    resolved = speed.for_model(speed.resolve(switches, device), model, device, log=lambda *_: None)
    forward = speed.prepare_model(model, resolved, log=lambda *_: None)
    cfg = TrainConfig(method="free", batch_size=batch, lr=0.05, replays=2, eps=8 / 255, schedule="constant")
    opt = make_optimizer(model, cfg, resolved.optimizer)
    sched = make_scheduler(opt, cfg, steps_per_epoch=100)
    method = METHODS.get("free")(cfg, model, opt, sched, lambda: norm.penalty(model), autocast_for("off", device),
                                 device, forward=forward)
    return model, method


def batches(n=3, batch=6, size=12, seed=1, device=CPU):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 3, size, size, generator=g).to(device),
             torch.randint(0, 10, (batch,), generator=g).to(device)) for _ in range(n)]


def max_rel_diff(model_a, model_b):
    worst = 0.0
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        if a.is_floating_point() and a.numel():
            worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)))
    return worst


@pytest.mark.parametrize("normalizer", ["vanilla", "convnorm", "cayley", "ocnn"])
def test_fast_path_training_matches_the_plain_path(normalizer):
    plain_model, plain = free_trainer(normalizer, PLAIN)
    fast_model, fast = free_trainer(normalizer, FAST_CPU)
    for x, y in batches():
        loss_p, _, _ = plain.train_batch(x, y)
        loss_f, _, _ = fast.train_batch(x, y)
        assert abs(float(loss_p) - float(loss_f)) <= TOLERANCE * abs(float(loss_p))
    assert max_rel_diff(plain_model, fast_model) <= TOLERANCE
    # delta moves by sign(gradient): equal except where a gradient is ~0 and rounding flips its sign
    assert (plain.delta != fast.delta).float().mean() < 0.01


def test_fast_path_really_changes_the_computation():
    """The equivalence test above would be empty if the switches did nothing."""
    model, _ = free_trainer("vanilla", FAST_CPU)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    _, method = free_trainer("vanilla", FAST_CPU)
    assert method.optimizer.defaults["foreach"] is True


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_sgd_kernels_make_the_same_update(impl):
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    twins = [p.detach().clone().requires_grad_(True) for p in params]
    opts = [speed.make_sgd(ps, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True, impl=i)
            for ps, i in ((params, "for_loop"), (twins, impl))]
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        grads = [torch.randn(p.shape, generator=g) for p in params]
        for ps, opt in zip((params, twins), opts):
            for p, gr in zip(ps, grads):
                p.grad = gr.clone()
            opt.step()
    for a, b in zip(params, twins):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="speed.optimizer"):
        speed.make_sgd(params, lr=0.1, momentum=0.9, weight_decay=0.0, impl="fast")


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_every_sgd_kernel_invalidates_weight_caches(impl):
    """ConvNorm caches its filter on the weight's version counter; a kernel
    that updated weights without bumping it would train with a stale filter
    (torch's fused CPU SGD does not bump it: speed.make_sgd makes up for it)."""
    models = []
    for kernel in ("for_loop", impl):
        model, method = free_trainer("convnorm", SpeedConfig(**{**PLAIN.__dict__, "optimizer": kernel}))
        for x, y in batches(n=3):
            method.train_batch(x, y)
        models.append(model)
    assert max_rel_diff(*models) <= 1e-5


def test_auto_resolves_through_the_measured_table_and_on_off_override_it():
    table = speed.MEASURED_DEFAULTS["cpu"]
    for normalizer in ("vanilla", "cayley", "my_plugin"):
        auto = speed.resolve(SpeedConfig(), CPU, normalizer)
        for name in speed.SWITCHES:
            expected = table[name]
            if isinstance(expected, tuple):  # on only for the normalizers where it was measured faster
                expected = normalizer in expected
            assert getattr(auto, name) == expected
    forced = speed.resolve(SpeedConfig(channels_last="on", compile="off", optimizer="fused", convnorm_fast="off"), CPU)
    assert forced.channels_last is True and forced.compile is False and forced.optimizer == "fused"
    assert forced.convnorm_fast is False
    # cudnn autotuning means nothing on a CPU
    assert speed.resolve(SpeedConfig(cudnn_benchmark="on"), CPU).cudnn_benchmark is False
    assert speed.resolve(SpeedConfig(), torch.device("cuda")).as_dict() == speed.MEASURED_DEFAULTS["cuda"]


def test_unmeasured_cuda_switches_are_pytorchs_own_defaults():
    """No GPU has measured the switches, so CUDA's table is what PyTorch does
    by itself there: SGD's foreach kernel (torch picks it for CUDA tensors),
    no channels_last, autotuning, compile or autocast; not the slow loop."""
    cuda = torch.device("cuda")
    assert speed.MEASURED_DEFAULTS["cuda"] == speed.TORCH_DEFAULTS["cuda"]
    auto = speed.resolve(SpeedConfig(), cuda, "vanilla")
    assert auto.optimizer == "foreach"
    assert not (auto.channels_last or auto.cudnn_benchmark or auto.compile)
    assert speed.AMP_AUTO["cuda"] is False
    assert speed.TORCH_DEFAULTS["cpu"]["optimizer"] == "for_loop" == speed.MEASURED_DEFAULTS["cpu"]["optimizer"]
    # torch's own rule: foreach where it has foreach kernels for the device (torch.optim.SGD, foreach=None)
    from torch.optim.optimizer import _get_foreach_kernels_supported_devices

    supported = _get_foreach_kernels_supported_devices()
    for device, table in speed.TORCH_DEFAULTS.items():
        assert table["optimizer"] == ("foreach" if device in supported else "for_loop")


def test_speed_section_parses_yaml_on_off_and_stays_out_of_the_run_id():
    raw = yaml.safe_load("speed:\n  channels_last: on\n  compile: off\n  optimizer: foreach\n")
    cfg = config_from_dict(raw, "test.yaml")
    assert cfg.speed.channels_last == "on" and cfg.speed.compile == "off" and cfg.speed.optimizer == "foreach"
    plain = expand_grid(config_from_dict({}, "a.yaml"))[0]
    fast = expand_grid(cfg)[0]
    assert plain.run_id == fast.run_id  # a fast run of a config is the same run
    with pytest.raises(ConfigError, match=r"speed\.channels_last.*allowed: auto, on, off"):
        config_from_dict({"speed": {"channels_last": "yes"}}, "bad.yaml")
    with pytest.raises(ConfigError, match=r"speed: .*unknown key.*'chanels_last'|chanels_last"):
        config_from_dict({"speed": {"chanels_last": "on"}}, "bad.yaml")


# ------------------------------------------------------------------ compile
def tiny_convnorm_model():
    torch.manual_seed(0)
    model = build_model("convnet", get_normalizer("convnorm"), num_classes=10, in_channels=3, mean=(0.5,) * 3,
                        std=(0.25,) * 3, batchnorm=False, width=0.25)
    return model.eval()


def test_fft_layers_are_kept_out_of_compiled_graphs():
    model = tiny_convnorm_model()
    marked = speed.mark_eager_layers(model)
    from robustbench_convnorm.normalizers.convnorm import ConvNorm2d

    layers = [m for m in model.modules() if isinstance(m, ConvNorm2d)]
    assert marked == len(layers) > 0
    assert speed.mark_eager_layers(model) == 0  # idempotent


def test_compile_that_cannot_start_falls_back_to_eager(monkeypatch):
    model = tiny_convnorm_model()
    x = torch.rand(2, 3, 12, 12)
    expected = model(x)

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    logged = []
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable"):
        fwd = speed.CompiledForward(model, log=logged.append)
    assert not fwd.active and logged
    assert torch.equal(fwd(x), expected)


def test_compile_whose_backend_fails_runs_eagerly_with_the_same_result():
    model = tiny_convnorm_model()
    x = torch.rand(2, 3, 12, 12)
    expected = model(x)

    def failing_backend(gm, example_inputs):
        raise RuntimeError("backend exploded")

    fwd = speed.CompiledForward(model, log=lambda *_: None, backend=failing_backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fwd(x)
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.slow
def test_inductor_compiled_model_matches_eager():
    """The real thing (needs a C++ compiler on CPU): compiled vs eager forward."""
    model = tiny_convnorm_model()
    x = torch.rand(4, 3, 12, 12)
    expected = model(x)
    fwd = speed.CompiledForward(model, log=lambda *_: None)
    assert torch.allclose(fwd(x), expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ host syncs
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def no_host_sync(monkeypatch):
    """Make every way of reading a tensor's value on the host raise."""
    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the training step")

    with monkeypatch.context() as m:
        for attr in HOST_READS:
            m.setattr(torch.Tensor, attr, forbidden)
        yield


@contextlib.contextmanager
def counting_host_reads(monkeypatch):
    """Count the reads of tensor values on the host (each one a sync on CUDA)."""
    count = [0]
    with monkeypatch.context() as m:
        for attr in HOST_READS:
            original = getattr(torch.Tensor, attr)

            def counted(*args, _original=original, **kwargs):
                count[0] += 1
                return _original(*args, **kwargs)

            m.setattr(torch.Tensor, attr, counted)
        yield count


@pytest.mark.parametrize("normalizer", ["vanilla", "convnorm", "cayley", "ocnn"])
def test_a_training_step_never_reads_values_back_to_the_host(normalizer, monkeypatch):
    _, method = free_trainer(normalizer, SpeedConfig())
    data = batches(n=2)
    method.train_batch(*data[0])  # first step allocates state (delta, running filters)
    with no_host_sync(monkeypatch):
        for x, y in data:
            loss, correct, seen = method.train_batch(x, y)
    assert torch.isfinite(loss)


def test_pgd_reads_nothing_back_to_the_host_per_step(monkeypatch):
    """PGD's inner loop runs on the device: the host reads of one evaluation
    (per batch: input range check, validity counts, outcomes) do not grow
    with the number of steps."""
    from attacks import get_evaluator

    torch.manual_seed(0)
    model = build_model("convnet", get_normalizer("vanilla"), num_classes=10, in_channels=3, mean=(0.5,) * 3,
                        std=(0.25,) * 3, batchnorm=False, width=0.25).eval()
    x, y = torch.rand(8, 3, 12, 12), torch.randint(0, 10, (8,))
    reads = {}
    for steps in (2, 12):
        pgd = get_evaluator("pgd", steps=steps)
        with counting_host_reads(monkeypatch) as count:
            pgd.run(model, x, y, generator=torch.Generator().manual_seed(0), batch_size=4)
        reads[steps] = count[0]
    assert reads[2] == reads[12] > 0


@pytest.mark.parametrize("measured", [False, True])
def test_amp_auto_follows_the_measured_table(measured, monkeypatch):
    monkeypatch.setitem(speed.AMP_AUTO, "cpu", measured)
    with autocast_for("auto", CPU)():
        assert torch.is_autocast_enabled("cpu") is measured
    with autocast_for("bf16", CPU)():
        assert torch.is_autocast_enabled("cpu")
    with autocast_for("off", CPU)():
        assert not torch.is_autocast_enabled("cpu")


# ------------------------------------------------------------------ on a GPU
CUDA = torch.device("cuda")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("normalizer", ["vanilla", "convnorm", "cayley", "ocnn"])
def test_cuda_defaults_train_like_the_plain_path(normalizer):
    """What ``speed: auto`` gives on CUDA (foreach SGD, and whatever a GPU
    check turns on) trains like the plain path there."""
    with exact_fp32(CUDA):  # TF32 off: the two paths then differ by fp32 rounding only
        plain_model, plain = free_trainer(normalizer, PLAIN, device=CUDA)
        auto_model, auto = free_trainer(normalizer, SpeedConfig(), device=CUDA)
        for x, y in batches(device=CUDA):
            plain.train_batch(x, y)
            auto.train_batch(x, y)
    assert max_rel_diff(plain_model, auto_model) <= TOLERANCE


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_every_sgd_kernel_invalidates_weight_caches_on_cuda(impl):
    """As on the CPU: ConvNorm's cached filter must follow every SGD kernel's update."""
    models = []
    with exact_fp32(CUDA):  # TF32 off: the two paths then differ by fp32 rounding only
        for kernel in ("for_loop", impl):
            model, method = free_trainer("convnorm", SpeedConfig(**{**PLAIN.__dict__, "optimizer": kernel}),
                                         device=CUDA)
            for x, y in batches(n=3, device=CUDA):
                method.train_batch(x, y)
            models.append(model)
    assert max_rel_diff(*models) <= 1e-5


def test_channels_last_is_turned_off_for_a_model_with_the_crashing_cpu_conv():
    """torch 2.13's CPU oneDNN backward of a channels_last 1x1 strided conv with
    fewer than 8 input channels corrupts the heap (the process dies); ResNet-18 at
    width 0.0625 has one (its first projection shortcut, 4 -> 8 channels). The
    switch is dropped for that model, with the conv named, and kept for a model
    without one, and on CUDA."""
    tiny = build_model("resnet18", get_normalizer("vanilla"), num_classes=10, in_channels=3, mean=(0.5,) * 3,
                       std=(0.25,) * 3, batchnorm=False, width=0.0625)
    wide = build_model("resnet18", get_normalizer("vanilla"), num_classes=10, in_channels=3, mean=(0.5,) * 3,
                       std=(0.25,) * 3, batchnorm=False, width=0.125)
    on = speed.resolve(SpeedConfig(channels_last="on"), CPU)
    said = []
    assert speed.for_model(on, tiny, CPU, log=said.append).channels_last is False
    assert "layer2.0.shortcut.0" in said[0]
    assert speed.for_model(on, wide, CPU, log=said.append).channels_last is True
    assert speed.for_model(on, tiny, torch.device("cuda"), log=said.append).channels_last is True
    assert len(said) == 1
    # a normalizer's own conv layer that calls F.conv2d itself (ConvNorm's 1x1 shortcut) counts too
    tiny_convnorm = build_model("resnet18", get_normalizer("convnorm"), num_classes=10, in_channels=3,
                                mean=(0.5,) * 3, std=(0.25,) * 3, batchnorm=False, width=0.0625)
    assert speed.for_model(on, tiny_convnorm, CPU, log=said.append).channels_last is False
    assert "layer2.0.shortcut.0" in said[-1]


def test_free_at_step_of_the_tiny_resnet_runs_with_channels_last_auto_on_cpu():
    """The whole path in a child process (a heap corruption kills it): the
    benchmark's replay resolves channels_last for vanilla (on by the measured
    CPU default) and must still train the width-0.0625 ResNet-18."""
    code = ("import torch; torch.set_num_threads(1)\n"
            "from benchmarks.replay import FreeReplay\n"
            "r = FreeReplay('vanilla', batch=4, width=0.0625, device=torch.device('cpu'))\n"
            "r.step(); r.step(); print('channels_last', r.switches.channels_last)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "channels_last False" in done.stdout
