"""The fast path: switches that change how a run computes, never what.

Each switch is ``auto``, ``on`` or ``off`` in the config's ``speed:`` section.
``auto`` resolves through :data:`MEASURED_DEFAULTS`, a per-device table that
turns a switch on only where ``python -m benchmarks.fast_path`` measured it
faster than the plain path AND its outputs matched the plain path's (see
docs/benchmarks.md, "Fast-path switches"). A switch nobody has measured on a
device type takes PyTorch's own default there (:data:`TORCH_DEFAULTS`). The
switches are not part of a run's identity (the run id): a fast run and a
plain run of the same config are the same run, which is why each switch must
match the plain path within the tolerance tested in tests/test_speed.py.

What is always on, because it is the design rather than a switch: data and
augmentation live on the device (``data.DeviceBatches``), training metrics
accumulate on the device with one host synchronisation per epoch, Cayley's Q
is cached while the weights are fixed, and ConvNorm's filter is computed
once per weight update. bf16 autocast is a training setting (``train.amp``,
part of the run id, since it changes the numbers beyond rounding); its
``auto`` follows :data:`AMP_AUTO`, measured like the switches.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional

import torch
from torch import nn

SWITCHES = ("channels_last", "cudnn_benchmark", "optimizer", "compile", "convnorm_fast")

#: What PyTorch itself does on each device type when a run asks for nothing:
#: contiguous (NCHW) tensors, no cuDNN autotuning, eager execution, fp32 (no
#: autocast), and for SGD the multi-tensor ``foreach`` kernel wherever torch
#: has foreach kernels for the device (CUDA; ``torch.optim.SGD`` with
#: ``foreach=None`` picks it there) and the per-parameter loop elsewhere (CPU).
#: ConvNorm's fast path is this project's own, so PyTorch has no default for it:
#: None defers to the layer's ``FAST_PATH_DEFAULT``. A switch that nobody has
#: measured on a device type takes this value there: unmeasured means what
#: PyTorch does, never a slower path chosen for want of a number.
TORCH_DEFAULTS: Dict[str, Dict[str, object]] = {
    "cpu": {"channels_last": False, "cudnn_benchmark": False, "optimizer": "for_loop", "compile": False,
            "convnorm_fast": None},
    "cuda": {"channels_last": False, "cudnn_benchmark": False, "optimizer": "foreach", "compile": False,
             "convnorm_fast": None},
}

#: What ``auto`` means per device type, from ``python -m benchmarks.fast_path``
#: (docs/benchmarks.md, "Fast-path switches against the plain path"). A value
#: that is a tuple of normalizer names is on for those normalizers only: the
#: ones where the switch measured at least 3% faster and matched (1e-4); a
#: normalizer not listed (a plug-in, say) was not measured and gets it off.
#: None for convnorm_fast defers to the layer's own per-device default
#: (normalizers/convnorm.py, FAST_PATH_DEFAULT), measured the same way.
#: ``python -m benchmarks.verdicts DIR`` turns a fast-path CSV (or a
#: ``benchmarks.gpu_check`` result folder) into the entries below by that rule.
MEASURED_DEFAULTS: Dict[str, Dict[str, object]] = {
    # CPU, 2026-11-21, ResNet-18 width 0.25, batch 128, 1 thread: channels_last
    # 1.15-1.34x for vanilla, ocnn, sn, tn; not faster for cayley, oni and
    # convnorm (plain or fast path). foreach and fused SGD within 2% of the
    # loop. compile: 1.2x per step for vanilla and ocnn, 0.85x for convnorm
    # and cayley, neutral for the rest; left off (opt-in) because a CPU-sized
    # run does not win back its cold compilation (docs/benchmarks.md).
    "cpu": {"channels_last": ("vanilla", "ocnn", "sn", "tn"), "cudnn_benchmark": False,
            "optimizer": "for_loop", "compile": False, "convnorm_fast": None},
    # CUDA: not measured yet (no GPU was lent to the sessions that built this),
    # so every entry is PyTorch's own default there (TORCH_DEFAULTS), SGD's
    # foreach kernel included. `python -m benchmarks.gpu_check` on a GPU
    # measures them; `python -m benchmarks.verdicts` then says what goes here.
    "cuda": dict(TORCH_DEFAULTS["cuda"]),
}

#: ``train.amp: auto`` per device type: bf16 autocast (FFTs and complex solves
#: stay fp32) where ``benchmarks.fast_path``'s ``amp=bf16`` rows matched fp32
#: within bf16 rounding for every normalizer and measured at least 3% faster
#: for most of them (``benchmarks.verdicts``). CPU: measured
#: 1.6-1.8x faster for vanilla, OCNN, SN and TN (1.05x ConvNorm, none for
#: Cayley, ONI off by 9e-2), but the CPU is the project's correctness
#: reference, so it stays fp32 there (``train.amp: bf16`` opts in). CUDA: not
#: measured, so PyTorch's default there: fp32, no autocast.
AMP_AUTO: Dict[str, bool] = {"cpu": False, "cuda": False}

OPTIMIZER_IMPLS = ("for_loop", "foreach", "fused")


def uses_bf16(amp: str, device: torch.device) -> bool:
    """Whether ``train.amp`` (auto / off / bf16) trains under bf16 autocast on
    this device; ``auto`` follows :data:`AMP_AUTO`."""
    return amp == "bf16" or (amp == "auto" and AMP_AUTO.get(device.type, False))


@dataclass(frozen=True)
class Resolved:
    """The switches of one run after ``auto`` was resolved for its device."""
    channels_last: bool
    cudnn_benchmark: bool
    optimizer: str
    compile: bool
    convnorm_fast: Optional[bool]

    def as_dict(self) -> Dict[str, object]:
        return {name: getattr(self, name) for name in SWITCHES}


def resolve(speed_cfg, device: torch.device, normalizer: Optional[str] = None) -> Resolved:
    """``auto`` -> the measured default of this device type (and normalizer,
    where the table lists normalizers); on/off as given."""
    table = MEASURED_DEFAULTS.get(device.type, MEASURED_DEFAULTS["cpu"])
    values = {}
    for name in SWITCHES:
        value = getattr(speed_cfg, name)
        if value == "auto":
            default = table[name]
            values[name] = (normalizer in default) if isinstance(default, tuple) else default
        elif name == "optimizer":
            values[name] = value
        else:
            values[name] = value == "on"
    if values["cudnn_benchmark"] and device.type != "cuda":
        values["cudnn_benchmark"] = False  # a CUDA-only switch means nothing elsewhere
    return Resolved(**values)


def make_sgd(params, *, lr, momentum, weight_decay, nesterov=False, impl: str = "for_loop"):
    """SGD with the chosen kernel: a Python loop over parameters, one foreach
    (multi-tensor) launch per operation, or the fused kernel. Same update."""
    if impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"speed.optimizer must be one of {', '.join(OPTIMIZER_IMPLS)}, got {impl!r}")
    kwargs = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                                **kwargs)
    if impl == "fused":
        # The fused kernel updates parameters without bumping their version
        # counters (torch 2.13, CPU), and ConvNorm's filter and Cayley's Q are
        # cached on those counters: without this a fused step would leave a
        # stale filter in place (found by benchmarks/fast_path.py).
        optimizer.register_step_post_hook(_bump_versions)
    return optimizer


def _bump_versions(optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            torch.autograd.graph.increment_version(p)


def mark_eager_layers(model: nn.Module) -> int:
    """Keep the FFT / complex layers (class attribute ``compile_eager``) out of
    torch.compile: dynamo runs them eagerly and compiles what is around them."""
    count = 0
    for module in model.modules():
        if getattr(type(module), "compile_eager", False) and not getattr(module, "_eager_marked", False):
            module.forward = torch.compiler.disable(module.forward)
            module._eager_marked = True
            count += 1
    return count


class CompiledForward:
    """``model(x)`` through torch.compile with a clean fallback to eager:
    while it runs, dynamo's ``suppress_errors`` is on, so a frame whose
    compilation fails (no C++ compiler for inductor on CPU, an unsupported
    op) runs eagerly with dynamo's warning instead of raising; and if
    ``torch.compile`` itself cannot be set up, every call is eager."""

    def __init__(self, model: nn.Module, log: Callable[[str], None] = print, backend="inductor"):
        self.model = model
        self.error: Optional[BaseException] = None
        mark_eager_layers(model)
        try:
            self.compiled = torch.compile(model, backend=backend)
        except Exception as exc:  # e.g. a Python version dynamo does not support
            self.error = exc
            message = f"speed.compile: torch.compile is unavailable ({type(exc).__name__}: {exc}); running eagerly"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            log("  " + message)

    @property
    def active(self) -> bool:
        return self.error is None

    def __call__(self, x):
        if self.error is not None:
            return self.model(x)
        import torch._dynamo

        with torch._dynamo.config.patch(suppress_errors=True):
            return self.compiled(x)


#: oneDNN in the CPU builds of torch 2.13 corrupts the heap (segfault, double
#: free) in the backward of a channels_last 1x1 convolution with stride > 1 and
#: fewer than 8 input channels (seen on AMD EPYC; e.g. ResNet-18's first
#: projection shortcut at width 0.0625). Wider or unstrided convs matched the
#: contiguous gradients to 2e-6 in the same sweep (docs/benchmarks.md).
CHANNELS_LAST_MIN_CHANNELS_CPU = 8


def channels_last_fault(model: nn.Module, device: torch.device) -> Optional[str]:
    """The first conv of ``model`` that channels_last would crash on ``device``
    (see :data:`CHANNELS_LAST_MIN_CHANNELS_CPU`), by name; None when none would."""
    if device.type != "cpu":
        return None
    for name, module in model.named_modules():
        # nn.Conv2d and the normalizers' conv layers (ConvNorm2d calls F.conv2d itself): duck-typed
        kernel, stride = getattr(module, "kernel_size", None), getattr(module, "stride", None)
        channels = getattr(module, "in_channels", None)
        if kernel is None or stride is None or not isinstance(channels, int):
            continue
        kernel = tuple(kernel) if isinstance(kernel, (tuple, list)) else (kernel, kernel)
        stride = tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)
        if channels < CHANNELS_LAST_MIN_CHANNELS_CPU and kernel == (1, 1) and max(stride) > 1:
            return name
    return None


def for_model(switches: Resolved, model: nn.Module, device: torch.device,
              log: Callable[[str], None] = print) -> Resolved:
    """``switches`` less what this model cannot run on ``device``: channels_last
    is turned off (and the log says why) where a conv would hit the CPU fault."""
    culprit = channels_last_fault(model, device) if switches.channels_last else None
    if culprit is None:
        return switches
    log(f"speed.channels_last off for this model: its conv {culprit!r} (1x1, strided, fewer than "
        f"{CHANNELS_LAST_MIN_CHANNELS_CPU} input channels) crashes oneDNN's CPU backward in channels_last")
    return replace(switches, channels_last=False)


def prepare_model(model: nn.Module, switches: Resolved, log: Callable[[str], None] = print,
                  compile_backend: str = "inductor") -> Callable:
    """Apply the model-level switches in place; return the callable that
    computes the model's forward (the compiled one when ``compile`` is on;
    ``compile_backend`` is for rehearsals: "aot_eager" traces like inductor
    but generates no code)."""
    if switches.channels_last:
        model.to(memory_format=torch.channels_last)
    if switches.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    from .normalizers.convnorm import set_convnorm_fast_path

    set_convnorm_fast_path(model, switches.convnorm_fast)
    if switches.compile:
        return CompiledForward(model, log, backend=compile_backend)
    return model
