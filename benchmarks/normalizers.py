"""Free-AT replay throughput and memory of ResNet-18 per normalizer.

    python -m benchmarks.normalizers [--batches 128,512] [--width W] [--size 32]
        [--steps N] [--warmup N] [--threads N] [--amp auto|off|bf16] [--only a,b] [--no-memory]
        [--arch resnet18|lipconvnet|... --model-options JSON]

The 1-Lipschitz layers (aol, soc, lot, bcop, sll, cpl) are measured in the
comparison's ConvNet with ``--arch lipconvnet --model-options '{"size": "xs"}'``
(sll and cpl are residual blocks there; in ResNet-18 they are AOL convs).

One replay (``benchmarks/replay.py``) is one step of the project's ``free``
training method: forward on x + delta, cross-entropy plus the normalizer's
penalty, backward, SGD step (momentum 0.9, weight decay 5e-4), delta step;
ResNet-18 without BatchNorm on a fixed random batch, the run's default
fast-path switches (``speed: auto``).

Time: for each batch size every model is built in this process, then each
repeat runs one replay of every normalizer in turn (round-robin); the table
gives images per second from the median over ``--steps`` repeats after
``--warmup`` untimed replays, and the ratio of each normalizer's step time to
``vanilla``'s, measured in the same process. CUDA: CUDA events. CPU:
``time.perf_counter``.

Memory, the peak growth during one replay over what was allocated before it:
CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()``
before a replay after warm-up. CPU: one fresh subprocess per normalizer and
batch builds everything, notes its resident set size (RSS), runs one replay
while a thread samples the RSS every millisecond (or takes the exact
high-water mark ``ru_maxrss`` when the replay raised it), and reports the
peak minus the starting RSS. Both devices also report the bytes autograd
saved for backward in the forward pass (distinct storages, through
``saved_tensors_hooks``), a device-independent count of activation memory.
``--no-memory`` skips the peak (and so the CPU's subprocesses): rehearsals.

Writes benchmarks/out/normalizers.csv, one row per normalizer and batch
naming device, torch version, dtype, batch, width and the command.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

import torch

from benchmarks.common import Table, command_line
from robustbench_convnorm.speed import uses_bf16

from benchmarks.replay import (FreeReplay, builtin_normalizers, fill_device_defaults, median, pick_device,
                               time_interleaved)

OUT = Path(__file__).resolve().parent / "out" / "normalizers.csv"


def saved_for_backward_bytes(replay: FreeReplay) -> int:
    """Bytes of the distinct storages autograd saves in one forward pass."""
    seen: Dict[int, int] = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    x = (replay.x + 0.01).requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = replay.method.loss(x, replay.y)
        loss = loss + replay.normalizer.penalty(replay.model)
    params = {p.untyped_storage().data_ptr() for p in replay.model.parameters()}
    del loss
    return sum(b for ptr, b in seen.items() if ptr not in params)


# ------------------------------------------------------------------ CPU memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_memory_child(args) -> Dict:
    """Run in a fresh process: peak RSS growth during one replay."""
    if args.threads:
        torch.set_num_threads(args.threads)
    replay = FreeReplay(args.memory_child, batch=args.memory_batch, width=args.width,
                        device=torch.device("cpu"), size=args.size, amp=args.amp, arch=args.arch,
                        model_options=json.loads(args.model_options))
    replay.method.delta = torch.zeros((args.memory_batch, 3, args.size, args.size))
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
    replay.step()
    done.set()
    sampler.join()
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    top = maxrss_after if maxrss_after > maxrss_before else max(peak[0], _rss_bytes())
    return {"peak_growth_bytes": top - start, "method": "ru_maxrss" if maxrss_after > maxrss_before else "sampled"}


def cpu_memory(name: str, batch: int, args) -> Dict:
    cmd = [sys.executable, "-m", "benchmarks.normalizers", "--memory-child", name, "--memory-batch", str(batch),
           "--width", str(args.width), "--size", str(args.size), "--amp", args.amp, "--arch", args.arch,
           "--model-options", args.model_options]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"memory child for {name} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def cuda_memory(replay: FreeReplay) -> int:
    device = replay.device
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    replay.step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


# ------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.normalizers", description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="128,512", help="comma-separated batch sizes")
    p.add_argument("--width", type=float, default=None,
                   help="ResNet-18 width multiplier (default: 1.0 on CUDA, 0.25 on CPU)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--arch", default="resnet18", help="the model (e.g. lipconvnet for the 1-Lipschitz layers)")
    p.add_argument("--model-options", default="{}", help='the model\'s options as JSON, e.g. \'{"size": "xs"}\'')
    p.add_argument("--steps", type=int, default=None, help="timed repeats (default: 20 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed replays first (default: 5 on CUDA, 1 on CPU)")
    p.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch's default)")
    p.add_argument("--amp", choices=["auto", "off", "bf16"], default="auto",
                   help="train.amp: bf16 autocast (FFTs stay fp32); auto = the run default (speed.AMP_AUTO)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--only", default="", help="comma-separated normalizers (vanilla is always included)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak memory measurement")
    p.add_argument("--out", default=str(OUT), help="CSV path")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory-batch", type=int, default=128, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def select(names: List[str], only: str) -> List[str]:
    if not only:
        return names
    wanted = {s.strip() for s in only.split(",") if s.strip()}
    unknown = wanted - set(names)
    if unknown:
        raise SystemExit(f"unknown normalizer(s): {', '.join(sorted(unknown))}; registered: {', '.join(names)}")
    return [n for n in names if n == "vanilla" or n in wanted]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(cpu_memory_child(args)))
        return 0
    device = pick_device(args.device)
    on_cuda = device.type == "cuda"
    fill_device_defaults(args, device)
    names = select(builtin_normalizers(), args.only)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    dtype = "bf16 autocast" if uses_bf16(args.amp, device) else "float32"
    table = Table("normalizers", device, command_line("benchmarks.normalizers", argv))

    for batch in batches:
        print(f"# batch {batch}: {len(names)} normalizers on {device}, width {args.width}, "
              f"{args.warmup} warm-up + {args.steps} timed replays", file=sys.stderr, flush=True)
        replays = {name: FreeReplay(name, batch=batch, width=args.width, device=device, size=args.size,
                                    amp=args.amp, arch=args.arch, model_options=json.loads(args.model_options))
                   for name in names}
        times = time_interleaved({n: r.step for n, r in replays.items()}, device,
                                 warmup=args.warmup, repeats=args.steps)
        saved = {name: saved_for_backward_bytes(r) for name, r in replays.items()}
        switches = {name: r.switches.as_dict() for name, r in replays.items()}
        if args.no_memory:
            memory = {name: 0 for name in names}
            mem_method = "not measured (--no-memory)"
        elif on_cuda:
            memory = {name: cuda_memory(r) for name, r in replays.items()}
            mem_method = "cuda max_memory_allocated - memory_allocated before the replay"
        else:
            del replays  # the memory children need the RAM
            found = {name: cpu_memory(name, batch, args) for name in names}
            memory = {name: v["peak_growth_bytes"] for name, v in found.items()}
            mem_method = "peak RSS growth during a first replay, fresh subprocess"
        base_t, base_m = median(times["vanilla"]), memory["vanilla"]
        for name in names:
            t = median(times[name])
            table.add({
                "normalizer": name, "arch": args.arch, "batch": batch, "image_size": args.size,
                "width": args.width,
                "dtype": dtype, "warmup": args.warmup, "steps": args.steps,
                "median_ms": round(t, 2), "min_ms": round(min(times[name]), 2),
                "max_ms": round(max(times[name]), 2),
                "images_per_s": round(batch / (t / 1000.0), 1),
                "time_vs_vanilla": round(t / base_t, 2),
                "peak_mem_mb": "" if args.no_memory else round(memory[name] / 2 ** 20, 1),
                "mem_vs_vanilla": round(memory[name] / base_m, 2) if base_m > 0 else "",
                "saved_for_backward_mb": round(saved[name] / 2 ** 20, 1),
                "mem_method": mem_method,
                "switches": json.dumps(switches[name], sort_keys=True),
            })
        table.write(Path(args.out))  # after every batch size: a run cut short keeps what it measured
    table.write(Path(args.out))
    print(table.markdown(
        ["normalizer", "batch", "images_per_s", "median_ms", "time_vs_vanilla", "peak_mem_mb", "mem_vs_vanilla",
         "saved_for_backward_mb"],
        title=f"Free-AT replay, {args.arch} {args.model_options} width {args.width}, {dtype}, {args.size}x{args.size}, "
              f"median of {args.steps} after {args.warmup} warm-up"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
