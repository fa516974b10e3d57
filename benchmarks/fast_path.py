"""Each fast-path switch against the plain path: faster, and the same result?

    python -m benchmarks.fast_path [--batch 128] [--width W] [--normalizers vanilla,convnorm,cayley]
        [--switches channels_last,...] [--steps N] [--warmup N] [--threads N]

For every switch of ``robustbench_convnorm.speed`` that applies to the device
(CPU: channels_last, optimizer foreach / fused, compile, convnorm_fast; CUDA
also cudnn_benchmark) and every normalizer it can affect, two free-AT replays
(``benchmarks/replay.py``) are built from the same seed: the plain path
(every switch off, SGD's per-parameter loop) and the plain path with that one
switch on; channels_last is also measured on top of ConvNorm's fast path
(the baseline column says which), and bf16 autocast (``train.amp: bf16``,
matching at bf16's tolerance, 2e-2) against fp32, which decides
``speed.AMP_AUTO``. Both first run ``--check-steps`` replays from the same state and
the logits of a fixed probe batch are compared, on CUDA in true fp32 (TF32 off:
its rounding would hide a difference; ``rel_diff`` = max |a - b| /
max |a|; it matches when at most ``--tolerance``, default 1e-4 in fp32, 2e-2
under bf16 autocast); then both are timed interleaved (median of
``--steps`` after ``--warmup``; CUDA events on GPU). ``verdict`` is "on"
where the switch is at least 3% faster AND matches, else "off": the table of
verdicts is what ``speed.MEASURED_DEFAULTS`` should say for this device
(``python -m benchmarks.verdicts`` turns it into that table).

Writes benchmarks/out/fast_path.csv, after every row.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from benchmarks.common import Table, command_line
from benchmarks.replay import (FreeReplay, builtin_normalizers, exact_fp32, fill_device_defaults, median,
                               pick_device, random_batch, sync, time_interleaved)
from robustbench_convnorm.config import SpeedConfig
from robustbench_convnorm.speed import uses_bf16

OUT = Path(__file__).resolve().parent / "out" / "fast_path.csv"
PLAIN = dict(channels_last="off", cudnn_benchmark="off", optimizer="for_loop", compile="off", convnorm_fast="off")
#: row name -> (baseline: changes to the plain path, the switch's change,
#: normalizers it can affect: None = all). Most rows measure one switch
#: against the plain path; a switch that meets another default-on switch in
#: the same layers (channels_last meets ConvNorm's fast path) is also
#: measured on top of it, since that is the combination a run gets.
VARIANTS: Dict[str, Tuple[Dict[str, str], Dict[str, str], object]] = {
    "channels_last": ({}, {"channels_last": "on"}, None),
    "channels_last (with convnorm_fast)": ({"convnorm_fast": "on"}, {"channels_last": "on"}, ("convnorm",)),
    "cudnn_benchmark": ({}, {"cudnn_benchmark": "on"}, None),
    "optimizer=foreach": ({}, {"optimizer": "foreach"}, None),
    "optimizer=fused": ({}, {"optimizer": "fused"}, None),
    "compile": ({}, {"compile": "on"}, None),
    "convnorm_fast": ({}, {"convnorm_fast": "on"}, ("convnorm",)),
    # not a speed switch but train.amp (it changes the numbers beyond rounding,
    # so it matches at bf16's tolerance): decides speed.AMP_AUTO
    "amp=bf16": ({}, {"amp": "bf16"}, None),
}
BF16_TOLERANCE = 2e-2
CUDA_ONLY = {"cudnn_benchmark"}
MIN_SPEEDUP = 1.03


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def compare(name: str, base: Dict[str, str], change: Dict[str, str], args, device) -> Dict[str, object]:
    change = dict(change)
    fast_amp = change.pop("amp", args.amp)
    plain = FreeReplay(name, batch=args.batch, width=args.width, device=device, amp=args.amp,
                       speed_cfg=SpeedConfig(**{**PLAIN, **base}))
    fast = FreeReplay(name, batch=args.batch, width=args.width, device=device, amp=fast_amp,
                      speed_cfg=SpeedConfig(**{**PLAIN, **base, **change}), compile_backend=args.compile_backend)
    with exact_fp32(device):  # does the switch compute the same function? (TF32 would blur it on CUDA)
        t0 = time.perf_counter()
        fast.step()  # the first call pays for compilation / autotuning; reported, not timed below
        sync(device)
        first_s = time.perf_counter() - t0
        plain.step()
        for _ in range(args.check_steps - 1):
            plain.step()
            fast.step()
        probe, _ = random_batch(64, 32, device, seed=1)
        plain.model.eval()
        fast.model.eval()
        diff = rel_diff(plain.logits(probe), fast.logits(probe))
    plain.model.train()
    fast.model.train()
    times = time_interleaved({"plain": plain.step, "fast": fast.step}, device, warmup=args.warmup,
                             repeats=args.steps)
    t_plain, t_fast = median(times["plain"]), median(times["fast"])
    active = getattr(fast.method.forward, "active", None)
    return {"plain_ms": round(t_plain, 2), "switched_ms": round(t_fast, 2), "speedup": round(t_plain / t_fast, 3),
            "rel_diff": f"{diff:.2e}", "first_step_s": round(first_s, 2),
            "compiled": "" if active is None else bool(active)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.fast_path", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=float, default=None, help="default: 1.0 on CUDA, 0.25 on CPU")
    p.add_argument("--normalizers", default=",".join(builtin_normalizers()))
    p.add_argument("--switches", default="", help=f"subset of {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=None, help="timed repeats (default: 20 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="default: 5 on CUDA, 1 on CPU")
    p.add_argument("--check-steps", type=int, default=2, help="replays before the logits are compared")
    p.add_argument("--tolerance", type=float, default=None, help="default: 1e-4 (fp32), 2e-2 (bf16)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--amp", choices=["auto", "off", "bf16"], default="auto")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compile row (rehearsals: aot_eager, no code generation)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(OUT))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    on_cuda = device.type == "cuda"
    fill_device_defaults(args, device)
    bf16 = uses_bf16(args.amp, device)
    tolerance = args.tolerance if args.tolerance is not None else (BF16_TOLERANCE if bf16 else 1e-4)
    wanted: List[str] = [s for s in args.switches.split(",") if s] or list(VARIANTS)
    unknown = set(wanted) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown switch(es) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    names = [n for n in args.normalizers.split(",") if n]
    table = Table("fast_path", device, command_line("benchmarks.fast_path", argv))
    for switch in wanted:
        base, change, affects = VARIANTS[switch]
        if switch in CUDA_ONLY and not on_cuda:
            continue
        for name in names:
            if affects is not None and name not in affects:
                continue
            print(f"# {switch} on {name}", file=sys.stderr, flush=True)
            try:
                found = compare(name, base, change, args, device)
            except Exception as exc:  # a switch that breaks is a finding, not a crash
                found = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            row_tolerance = BF16_TOLERANCE if change.get("amp") == "bf16" else tolerance
            matches = "error" not in found and float(found["rel_diff"]) <= row_tolerance
            faster = "error" not in found and found["speedup"] >= MIN_SPEEDUP
            table.add({"switch": switch, "normalizer": name,
                       "baseline": "plain" + "".join(f" + {k}" for k in base),
                       "batch": args.batch, "width": args.width,
                       "dtype": "bf16 autocast" if bf16 else "float32", "steps": args.steps, **found,
                       "tolerance": row_tolerance, "matches": matches, "verdict": "on" if matches and faster else "off"})
            table.write(Path(args.out))  # after every row: a run cut short keeps what it measured
    table.write(Path(args.out))
    print(table.markdown(["switch", "normalizer", "baseline", "plain_ms", "switched_ms", "speedup", "rel_diff", "matches",
                          "verdict"],
                         title=f"Fast-path switches, free-AT replay, ResNet-18 width {args.width}, batch {args.batch}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
