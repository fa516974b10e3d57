"""One free-AT replay of the project's own training code, and interleaved timing.

A replay is what free adversarial training does m times per minibatch:
forward on x + delta, loss (cross-entropy plus the normalizer's penalty),
backward (giving parameter and input gradients at once), SGD step, delta
step. ``FreeReplay`` builds ResNet-18 (or another registered model) and the
``free`` method of ``robustbench_convnorm.training`` with ``replays: 1``, so
one ``step()`` is exactly one replay of a real run, fast-path switches
included.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from robustbench_convnorm import speed
from robustbench_convnorm.config import SpeedConfig, TrainConfig
from robustbench_convnorm.models import build_model
from robustbench_convnorm.normalizers import NORMALIZERS, get_normalizer, list_normalizers
from robustbench_convnorm.training.loop import autocast_for, make_optimizer
from robustbench_convnorm.training.methods import METHODS
from robustbench_convnorm.training.schedules import make_scheduler

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


#: What an unset --width / --steps / --warmup means: the real ResNet-18 and
#: more repeats on a GPU, a quarter width on a CPU so that a plan takes minutes.
DEVICE_DEFAULTS = {"cuda": {"width": 1.0, "steps": 20, "warmup": 5},
                   "cpu": {"width": 0.25, "steps": 5, "warmup": 1}}


def fill_device_defaults(args, device: torch.device) -> None:
    """Give the options a benchmark has and left unset (None) their value for
    this device type, and set torch's intra-op threads when --threads asks."""
    defaults = DEVICE_DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    for name, value in defaults.items():
        if getattr(args, name, value) is None:
            setattr(args, name, value)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def builtin_normalizers() -> List[str]:
    """vanilla first, then every normalizer this package ships (not user plug-ins)."""
    names = [n for n in list_normalizers()
             if NORMALIZERS.get(n).__module__.startswith("robustbench_convnorm.normalizers.")]
    return ["vanilla"] + [n for n in names if n != "vanilla"]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def random_batch(n: int, size: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return x.to(device), y.to(device)


class FreeReplay:
    """ResNet-18 + SGD + the ``free`` training method, one replay per ``step()``."""

    def __init__(self, normalizer: str, *, batch: int, width: float, device: torch.device, size: int = 32,
                 arch: str = "resnet18", amp: str = "auto", speed_cfg: Optional[SpeedConfig] = None,
                 seed: int = 0, options: Optional[Dict] = None, compile_backend: str = "inductor",
                 model_options: Optional[Dict] = None):
        torch.manual_seed(seed)
        self.device = device
        self.normalizer = get_normalizer(normalizer, **(options or {}))
        self.model = build_model(arch, self.normalizer, num_classes=10, in_channels=3, mean=CIFAR_MEAN,
                                 std=CIFAR_STD, batchnorm=False, width=width,
                                 **(model_options or {})).to(device)
        self.model.train()
        self.switches = speed.for_model(speed.resolve(speed_cfg or SpeedConfig(), device, normalizer), self.model,
                                        device, log=lambda *_: None)
        autotuning = torch.backends.cudnn.benchmark
        forward = speed.prepare_model(self.model, self.switches, log=lambda *_: None,
                                      compile_backend=compile_backend)
        torch.backends.cudnn.benchmark = autotuning  # process-global: each replay sets its own in step()
        self.cfg = TrainConfig(method="free", batch_size=batch, lr=0.01, replays=1, eps=8 / 255,
                               schedule="constant", amp=amp)
        self.optimizer = make_optimizer(self.model, self.cfg, self.switches.optimizer)
        scheduler = make_scheduler(self.optimizer, self.cfg, steps_per_epoch=1)
        model = self.model
        self.method = METHODS.get("free")(self.cfg, model, self.optimizer, scheduler,
                                          lambda: self.normalizer.penalty(model),
                                          autocast_for(amp, device), device, forward=forward)
        self.x, self.y = random_batch(batch, size, device, seed)
        self.last = None

    def step(self):
        """One replay; keeps the (device) loss sum so that callers may compare runs."""
        with cudnn_autotuning(self.switches.cudnn_benchmark):
            self.last = self.method.train_batch(self.x, self.y)
        return self.last

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.method.autocast(), cudnn_autotuning(self.switches.cudnn_benchmark):
            return self.method.forward(x).float()


@contextlib.contextmanager
def cudnn_autotuning(enabled: bool):
    """``torch.backends.cudnn.benchmark`` for the calls inside only. The flag is
    process-global and ``speed.prepare_model`` sets it for good, which is right
    for a run (one model per process) but would give the plain path of a
    comparison the autotuning of the switched one built beside it."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """True fp32 for the calls inside. On CUDA, PyTorch runs fp32 convolutions
    in TF32 by default (``cudnn.allow_tf32``): two conv algorithms then differ
    by TF32's rounding (about 1e-3), which would hide whether a switch computes
    the same function as the plain path. Comparisons run in here; timings run
    with PyTorch's defaults, as a training run does. No-op on a CPU."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: Dict[str, Callable[[], object]], device: torch.device, *, warmup: int,
                     repeats: int) -> Dict[str, List[float]]:
    """Milliseconds of each function, ``repeats`` times after ``warmup`` calls,
    taking one call of every function in turn per repeat (round-robin), so
    that a busy moment of a shared machine hits all of them alike. CUDA:
    CUDA events around each call; CPU: ``time.perf_counter``."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                times[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1000.0)
    return times


def median(values: List[float]) -> float:
    return statistics.median(values)
