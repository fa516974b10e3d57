"""Cost of the Lipschitz diagnostics: `python -m benchmarks.lipschitz`.

Times, per conv configuration, each quantity of robustbench_convnorm.lipschitz:

- exact: the largest singular value of the circular conv (FFT of the kernel to
  the input size, largest eigenvalue of a Gram matrix per frequency);
- TN: the tensor-norm bound, a fixed amount of work (HOPM from every start,
  ``--tn-iters`` sweeps each, no early stop) so that configurations compare;
- F4: the fantastic-four bound (four matricizations, exact matrix norms);
- flat: sqrt(h'w') * ||W_flat||_2;
- power: power iteration on the zero-padded nn.Conv2d layer (``--power-iters``
  forward + vector-Jacobian products, no early stop).

Three sweeps from a base of C_in = C_out = 64, 3x3 kernel, stride 1, 32x32
input: kernel size, channels, input size (plus one strided row). TN, F4 and
flat never see the input size; exact and power do. Each entry is the median
over ``--repeats`` timed runs after one warm-up (CUDA timings synchronise).
Writes benchmarks/out/lipschitz.csv and prints a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch

from benchmarks.common import Table, command_line, device_description
from torch import nn

from robustbench_convnorm import lipschitz as lip

OUT = Path(__file__).resolve().parent / "out" / "lipschitz.csv"
METHODS = ("exact", "tn", "f4", "flat", "power")


def configs(quick: bool):
    base = dict(c=64, k=3, s=1, n=32)
    rows = []
    for k in ((1, 3, 5) if quick else (1, 3, 5, 7)):
        rows.append(("kernel", dict(base, k=k)))
    for c in ((16, 64) if quick else (16, 64, 256)):
        rows.append(("channels", dict(base, c=c)))
    for n in ((8, 16, 32) if quick else (8, 16, 32, 64)):
        rows.append(("input", dict(base, n=n)))
    rows.append(("stride", dict(base, s=2)))
    return rows


def timed(fn: Callable[[], object], device: torch.device, repeats: int):
    def once():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        value = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1000.0, value

    once()  # warm-up
    runs = [once() for _ in range(repeats)]
    times = [t for t, _ in runs]
    return statistics.median(times), min(times), max(times), float(runs[-1][1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lipschitz", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--tn-iters", type=int, default=100, help="HOPM sweeps per start")
    p.add_argument("--tn-restarts", type=int, default=3, help="random starts besides the 4 Fourier ones")
    p.add_argument("--power-iters", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="fewer configurations (a smoke run)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dev_name = device_description(device)
    command = command_line("benchmarks.lipschitz", argv)
    table = Table("lipschitz", device, command)
    rows = table.rows
    gen = torch.Generator(device=device)
    for sweep, cfg in configs(args.quick):
        c, k, s, n = cfg["c"], cfg["k"], cfg["s"], cfg["n"]
        c_out = 2 * c if s > 1 else c
        torch.manual_seed(0)
        conv = nn.Conv2d(c, c_out, k, stride=s, padding=(k - 1) // 2, bias=False).to(device)
        w = conv.weight.detach()
        n_starts = lip.hopm_start_count(lip.reshape_strided_kernel(w, s).shape, restarts=args.tn_restarts)
        fns = {
            "exact": lambda: lip.circular_spectral_norm(w, n, s),
            "tn": lambda: lip.tn_bound(w, s, n_iter=args.tn_iters, restarts=args.tn_restarts, tol=0.0,
                                       generator=gen),
            "f4": lambda: lip.f4_bound(w, s),
            "flat": lambda: lip.flat_bound(w, s),
            "power": lambda: lip.layer_spectral_norm(conv, (c, n, n), n_iter=args.power_iters, tol=0.0,
                                                     generator=gen),
        }
        for method in METHODS:
            med, lo, hi, value = timed(fns[method], device, args.repeats)
            table.add({"sweep": sweep, "c_in": c, "c_out": c_out, "k": k, "stride": s, "n": n, "method": method,
                       "dtype": "float32 (exact: float64)", "batch": 1,
                       "median_ms": round(med, 3), "min_ms": round(lo, 3), "max_ms": round(hi, 3),
                       "value": round(value, 6), "repeats": args.repeats, "tn_iters": args.tn_iters,
                       "tn_starts": n_starts, "power_iters": args.power_iters})
        print(f"  {sweep:8s} C={c}->{c_out} k={k} s={s} n={n}: " +
              ", ".join(f"{r['method']} {r['median_ms']:.1f} ms" for r in rows[-len(METHODS):]), flush=True)
    out = table.write(Path(args.out))
    print()
    print(f"Lipschitz diagnostics, {device.type} ({dev_name}), torch {torch.__version__}; median of "
          f"{args.repeats} after 1 warm-up; TN = {args.tn_iters} HOPM sweeps from each start (no early stop), "
          f"power = {args.power_iters} iterations. Command: `{command.strip()}`. CSV: {out}")
    print()
    print("| sweep | C_in -> C_out | k | s | n | exact ms | TN ms | F4 ms | flat ms | power ms | exact | TN | F4 | flat |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    by_cfg: Dict[tuple, Dict[str, dict]] = {}
    for r in rows:
        by_cfg.setdefault((r["sweep"], r["c_in"], r["c_out"], r["k"], r["stride"], r["n"]), {})[r["method"]] = r
    for (sweep, c, c_out, k, s, n), m in by_cfg.items():
        times = " | ".join(f"{m[x]['median_ms']:.1f}" for x in METHODS)
        values = " | ".join(f"{m[x]['value']:.3f}" for x in ("exact", "tn", "f4", "flat"))
        print(f"| {sweep} | {c} -> {c_out} | {k} | {s} | {n} | {times} | {values} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
