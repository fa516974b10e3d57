"""Where a free-AT replay spends its time, per normalizer: by phase (forward,
backward, optimizer step) and by kind of operation (convolutions, FFTs,
matrix products, linear algebra: inverses, solves, decompositions; the rest),
from torch.profiler's self times, and the bytes autograd saves for backward.

    python -m benchmarks.profile_layers [--only convnorm,cayley] [--width 0.25] [--batch 128]
        [--steps 3] [--threads 1] [--device cpu] [--arch resnet18 --model-options JSON]
        [--out benchmarks/out/profile_layers.csv]

A replay here is the one of ``benchmarks/replay.py`` (the project's own
``free`` method, ResNet-18 without BatchNorm unless ``--arch`` names another
model, e.g. the equal-compute comparison's ``convnet``, the run's fast-path defaults),
split into its phases by hand so each can be timed: forward with the loss
and penalty, backward, SGD step. Self times are summed over ``--steps``
profiled replays after one warm-up and divided by the number of steps; the
kinds add up to the phase totals up to the profiler's own overhead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.common import Table, command_line
from benchmarks.normalizers import saved_for_backward_bytes
from benchmarks.replay import FreeReplay, builtin_normalizers, pick_device

OUT = Path(__file__).resolve().parent / "out" / "profile_layers.csv"
PHASES = ("forward", "backward", "optimizer")
#: op-name fragments of each kind, checked in order (the first match wins)
KINDS = (("fft", ("fft",)),
         ("linalg", ("linalg", "lu_", "_lu", "cholesky", "triangular", "svd", "eig", "inverse", "qr")),
         ("conv", ("conv", "mkldnn_convolution")),
         ("matmul", ("matmul", "::mm", "bmm", "addmm", "baddbmm", "::dot", "einsum")),
         )


def kind_of(op: str) -> str:
    name = op.lower()
    for kind, parts in KINDS:
        if any(p in name for p in parts):
            return kind
    return "other"


def replay_phases(r: FreeReplay) -> None:
    """One free-AT replay, its phases under profiler labels (the same steps as
    Free.train_batch with replays=1)."""
    method = r.method
    if method.delta is None:
        method.delta = torch.zeros_like(r.x)
    d = method.delta.clone().requires_grad_(True)
    with record_function("phase:forward"):
        loss, _ = method.loss((r.x + d).clamp(0, 1), r.y)
        total = loss + method.penalty()
    with record_function("phase:backward"):
        method.optimizer.zero_grad(set_to_none=True)
        total.backward()
    with record_function("phase:optimizer"):
        method.optimizer.step()
        method.scheduler.step()
        with torch.no_grad():
            method.delta = (d + method.step * d.grad.sign()).clamp(-method.eps, method.eps)


def profile_one(r: FreeReplay, steps: int) -> Dict[str, float]:
    """ms per replay: each phase's total, and each kind's self time."""
    replay_phases(r)  # warm-up: caches, allocator
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if r.device.type == "cuda" else []),
                 record_shapes=False) as prof:
        for _ in range(steps):
            replay_phases(r)
    out: Dict[str, float] = {f"{p}_ms": 0.0 for p in PHASES}
    out.update({f"{k}_ms": 0.0 for k, _ in KINDS})
    out["other_ms"] = 0.0
    cuda = r.device.type == "cuda"
    for ev in prof.key_averages():
        if ev.key.startswith("phase:"):
            out[f"{ev.key[len('phase:'):]}_ms"] += (ev.device_time_total if cuda else ev.cpu_time_total) / 1e3
            continue
        if ev.key.startswith(("ProfilerStep", "Optimizer.", "aten::empty", "[memory]")):
            continue
        self_us = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        out[f"{kind_of(ev.key)}_ms"] += self_us / 1e3
    return {k: v / steps for k, v in out.items()}


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None, help="normalizers to profile (comma-separated; default: all built in)")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="resnet18", help="the model (convnet: the equal-compute comparison's)")
    p.add_argument("--model-options", default="{}", help="the model's options as JSON")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    names = args.only.split(",") if args.only else builtin_normalizers()
    if "vanilla" not in names:
        names = ["vanilla"] + names
    table = Table("profile_layers", device, command_line("benchmarks.profile_layers", argv))
    base = None
    for name in names:
        r = FreeReplay(name, batch=args.batch, width=args.width, device=device, size=args.size, arch=args.arch,
                       model_options=json.loads(args.model_options))
        ms = profile_one(r, args.steps)
        total = sum(ms[f"{ph}_ms"] for ph in PHASES)
        base = total if name == "vanilla" else base
        row = {"normalizer": name, "arch": args.arch, "width": args.width, "batch": args.batch,
               "size": args.size, "steps": args.steps, "total_ms": round(total, 2),
               "time_vs_vanilla": round(total / base, 3) if base else "",
               **{k: round(v, 2) for k, v in ms.items()},
               "saved_for_backward_mb": round(saved_for_backward_bytes(r) / 2 ** 20, 2)}
        table.add(row)
        print(f"{name:>10}: {total:8.1f} ms/replay  " + "  ".join(f"{k[:-3]} {v:7.1f}" for k, v in ms.items()),
              flush=True)
    table.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
