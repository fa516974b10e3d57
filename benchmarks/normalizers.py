"""Time and memory of one ResNet-18 training step per normalizer.

    python -m benchmarks.normalizers [--width W] [--batch 128] [--size 32]
        [--steps N] [--warmup N] [--threads N] [--amp bf16] [--only a,b]

One step = forward, loss (cross-entropy plus the normalizer's penalty),
backward, SGD step (momentum 0.9, weight decay 5e-4), on a fixed random batch
of ``--batch`` images of ``--size`` x ``--size`` pixels, no BatchNorm.

Time: every model is built once in this process, then each repeat times one
step of every normalizer in turn (round-robin, so a slow period of a shared
machine hits all of them alike); the table reports the median over
``--steps`` repeats after ``--warmup`` untimed steps each, and the ratio to
``vanilla`` from the same process. CUDA: CUDA events around the step.
CPU: ``time.perf_counter`` around the step.

Memory, the peak growth during one step over what was allocated before it:
CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()``
before a step after warm-up (activations, gradients, temporaries). CPU: one
fresh subprocess per normalizer builds the model, optimizer and batch,
records its resident set size (RSS, /proc/self/statm), runs one step while a
thread samples the RSS every millisecond, and reports the peak minus the
starting RSS (the exact high-water mark ``ru_maxrss`` where the step raised
it); this includes the gradients, momentum buffers and the allocator's own
overhead. Both devices also report the bytes autograd saved for backward in
the forward pass (distinct storages, through ``saved_tensors_hooks``), a
device-independent count of activation memory.

Writes benchmarks/out/normalizers.csv and prints a markdown table.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F

from benchmarks.common import device_description

from robustbench_convnorm.models import build_model
from robustbench_convnorm.normalizers import NORMALIZERS, get_normalizer, list_normalizers

OUT = Path(__file__).resolve().parent / "out" / "normalizers.csv"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def builtin_normalizers() -> List[str]:
    names = [n for n in list_normalizers()
             if NORMALIZERS.get(n).__module__.startswith("robustbench_convnorm.normalizers.")]
    return ["vanilla"] + [n for n in names if n != "vanilla"]


def build(name: str, width: float, device: torch.device):
    torch.manual_seed(0)
    normalizer = get_normalizer(name)
    model = build_model("resnet18", normalizer, num_classes=10, in_channels=3, mean=CIFAR_MEAN, std=CIFAR_STD,
                        batchnorm=False, width=width).to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return normalizer, model, opt


def batch(n: int, size: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return x.to(device), y.to(device)


def train_step(normalizer, model, opt, x, y, amp: bool) -> None:
    opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(x), y) + normalizer.penalty(model)
    loss.backward()
    opt.step()


def saved_for_backward_bytes(normalizer, model, x, y, amp: bool) -> int:
    """Bytes of the distinct storages autograd saves in one forward pass."""
    seen: Dict[int, int] = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y) + normalizer.penalty(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    del loss
    return sum(b for ptr, b in seen.items() if ptr not in params)


# ------------------------------------------------------------------ CPU memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_memory_child(args) -> Dict:
    """Run in a fresh process: peak RSS growth during one training step."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device("cpu")
    normalizer, model, opt = build(args.memory_child, args.width, device)
    x, y = batch(args.batch, args.size, device)
    start = _rss_bytes()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    train_step(normalizer, model, opt, x, y, args.amp == "bf16")
    done.set()
    sampler.join()
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    top = maxrss_after if maxrss_after > maxrss_before else max(peak[0], _rss_bytes())
    return {"peak_growth_bytes": top - start, "method": "ru_maxrss" if maxrss_after > maxrss_before else "sampled"}


def cpu_memory(name: str, args) -> Dict:
    cmd = [sys.executable, "-m", "benchmarks.normalizers", "--memory-child", name, "--width", str(args.width),
           "--batch", str(args.batch), "--size", str(args.size), "--amp", args.amp]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"memory child for {name} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ timing
def time_steps(runs: Dict[str, tuple], x, y, args, device) -> Dict[str, List[float]]:
    amp = args.amp == "bf16"
    for name, (normalizer, model, opt) in runs.items():
        for _ in range(args.warmup):
            train_step(normalizer, model, opt, x, y, amp)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for _ in range(args.steps):
        for name, (normalizer, model, opt) in runs.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                train_step(normalizer, model, opt, x, y, amp)
                end.record()
                torch.cuda.synchronize(device)
                times[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                train_step(normalizer, model, opt, x, y, amp)
                times[name].append((time.perf_counter() - t0) * 1000.0)
    return times


def cuda_memory(runs, x, y, args, device) -> Dict[str, int]:
    out = {}
    amp = args.amp == "bf16"
    for name, (normalizer, model, opt) in runs.items():
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        train_step(normalizer, model, opt, x, y, amp)
        torch.cuda.synchronize(device)
        out[name] = torch.cuda.max_memory_allocated(device) - base
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.normalizers", description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=None,
                   help="ResNet-18 width multiplier (default: 1.0 on CUDA, 0.25 on CPU)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help="timed repeats (default: 20 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 on CUDA, 1 on CPU)")
    p.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch's default)")
    p.add_argument("--amp", choices=["off", "bf16"], default="off", help="bf16 autocast (FFTs stay fp32)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--only", default="", help="comma-separated normalizers (vanilla is always included)")
    p.add_argument("--out", default=str(OUT), help="CSV path")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(cpu_memory_child(args)))
        return 0
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    on_cuda = device.type == "cuda"
    args.width = args.width if args.width is not None else (1.0 if on_cuda else 0.25)
    args.steps = args.steps if args.steps is not None else (20 if on_cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = builtin_normalizers()
    if args.only:
        wanted = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = wanted - set(names)
        if unknown:
            print(f"unknown normalizer(s): {', '.join(sorted(unknown))}; registered: {', '.join(names)}",
                  file=sys.stderr)
            return 2
        names = [n for n in names if n == "vanilla" or n in wanted]

    x, y = batch(args.batch, args.size, device)
    runs = {name: build(name, args.width, device) for name in names}
    amp = args.amp == "bf16"
    print(f"# {len(names)} normalizers on {device}, width {args.width}, batch {args.batch}, "
          f"{args.size}x{args.size}, {args.warmup} warm-up + {args.steps} timed steps", file=sys.stderr)
    times = time_steps(runs, x, y, args, device)
    saved = {name: saved_for_backward_bytes(*runs[name][:2], x, y, amp) for name in names}
    if on_cuda:
        memory = cuda_memory(runs, x, y, args, device)
        mem_method = "cuda max_memory_allocated - memory_allocated before the step"
    else:
        del runs  # the memory children need the RAM
        found = {name: cpu_memory(name, args) for name in names}
        memory = {name: v["peak_growth_bytes"] for name, v in found.items()}
        mem_method = "peak RSS growth during a first step, fresh subprocess (" + ", ".join(
            sorted({v["method"] for v in found.values()})) + ")"

    device_name = device_description(device)
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    command = "python -m benchmarks.normalizers " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    dtype = "bf16 autocast" if amp else "float32"
    threads = torch.get_num_threads() if not on_cuda else ""
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    base_t = statistics.median(times["vanilla"])
    base_m = memory["vanilla"]
    rows = []
    for name in names:
        t = statistics.median(times[name])
        rows.append({
            "normalizer": name, "device": device.type, "device_name": device_name,
            "cpu_threads": threads, "torch": torch.__version__, "dtype": dtype, "batch": args.batch,
            "image_size": args.size, "width": args.width, "warmup": args.warmup, "steps": args.steps,
            "median_ms": round(t, 2), "min_ms": round(min(times[name]), 2), "max_ms": round(max(times[name]), 2),
            "time_vs_vanilla": round(t / base_t, 2),
            "peak_mem_mb": round(memory[name] / 2 ** 20, 1),
            "mem_vs_vanilla": round(memory[name] / base_m, 2) if base_m > 0 else "",
            "saved_for_backward_mb": round(saved[name] / 2 ** 20, 1),
            "mem_method": mem_method, "load_avg_1min": load, "command": command, "date": date,
        })
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    print(f"ResNet-18 training step, {device.type} ({device_name}{f', {threads} threads' if threads else ''}), "
          f"torch {torch.__version__}, {dtype}, batch {args.batch} at {args.size}x{args.size}, "
          f"width {args.width}; median of {args.steps} steps after {args.warmup} warm-up; {date}"
          + (f"; load average {load} at the end" if load else ""))
    print(f"command: `{command}`\n")
    print("| normalizer | ms / step (median) | min-max ms | x vanilla | peak memory MB | x vanilla "
          "| saved for backward MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['normalizer']} | {r['median_ms']:.1f} | {r['min_ms']:.0f}-{r['max_ms']:.0f} | "
              f"{r['time_vs_vanilla']:.2f} | {r['peak_mem_mb']:.1f} | {r['mem_vs_vanilla']} | "
              f"{r['saved_for_backward_mb']:.1f} |")
    print(f"\nmemory: {mem_method}; CSV: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
