"""Precision, time and peak memory of the conv-norm methods on zero-padded
layers, as in Figure 5 of the TN paper (Grishina, Gorbunov and Rakhuba, ECCV
2024), at small sizes: `python -m benchmarks.bounds`.

For 3x3 kernels with N(0, 1) entries, zero padding 1, stride 1, over a sweep
of input sizes (channels fixed) and one of channel counts (input size fixed):

- reference: power iteration on the zero-padded nn.Conv2d layer itself (float64,
  ``--ref-iters`` steps): the norm everything is compared with;
- exact circular: the exact norm of the circular conv on the n x n input (the
  periodic version of the layer: close, but neither above nor below it in general);
- padded circular: the exact circular norm on the (n+2) x (n+2) padded grid, a
  sound upper bound of the zero-padded layer (lipschitz.network's conv rule);
- Gram: Gram iteration (lipschitz.gram) on that padded grid, also sound;
- TN: the TN bound from HOPM (a lower estimate of an upper bound); F4: Singla
  and Feizi's four matricizations (sound).

precision = |sigma_method - sigma_ref| / sigma_ref. Time: median of
``--repeats`` runs after a warm-up. Peak memory: each method runs once more
in a forked process, whose peak resident memory above its resident memory
at the start, less that of a forked process that computes nothing, is
reported (MiB; torch's CPU allocations are not visible to tracemalloc). Writes docs/bounds_benchmark.csv and docs/bounds_benchmark.png.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn

from benchmarks.common import Table, command_line, device_description
from robustbench_convnorm import lipschitz as lip
from robustbench_convnorm.lipschitz.gram import gram_iteration_bound
from robustbench_convnorm.lipschitz.network.conv_rules import padded_circular_bound

DOCS = Path(__file__).resolve().parents[1] / "docs"
METHODS = ("exact circular", "padded circular", "gram", "tn", "f4")
SOUND = {"exact circular": "no (circular version)", "padded circular": "yes", "gram": "yes",
         "tn": "no (HOPM: lower estimate of the bound)", "f4": "yes"}


def sweeps(quick: bool, sizes=None, channels=None, base_channels: int = 16, base_size: int = 16):
    sizes = sizes or ((8, 16) if quick else (8, 16, 32, 48))
    channels = channels or ((4, 16) if quick else (4, 16, 32, 64))
    for n in sizes:
        yield "input size", base_channels, n
    for c in channels:
        yield "channels", c, base_size


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def _peak_child(fn, queue):
    start = _rss_mib()
    fn()
    queue.put(max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start))


def peak_memory_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory of one call, in a forked process (MiB above its start)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(fn, queue))
    proc.start()
    value = queue.get(timeout=600)
    proc.join()
    return float(value)


def timed(fn: Callable[[], float], repeats: int):
    value = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, float(value)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bounds", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ref-iters", type=int, default=1000, help="power iterations of the reference")
    p.add_argument("--tn-restarts", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="two sizes per sweep (a smoke run)")
    p.add_argument("--no-memory", action="store_true", help="skip the forked peak-memory runs")
    p.add_argument("--no-figure", action="store_true", help="write the CSV only")
    p.add_argument("--sizes", type=int, nargs="+", help="input sizes of the first sweep")
    p.add_argument("--channels", type=int, nargs="+", help="channel counts of the second sweep")
    p.add_argument("--base", type=int, nargs=2, default=(16, 16), metavar=("CHANNELS", "SIZE"),
                   help="the channels of the size sweep and the size of the channel sweep")
    p.add_argument("--out", default=str(DOCS / "bounds_benchmark.csv"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    command = command_line("benchmarks.bounds", argv)
    table = Table("bounds", device, command)
    gen = torch.Generator().manual_seed(0)
    # what a forked process that computes nothing peaks at: subtracted from every reading
    floor = 0.0 if args.no_memory else peak_memory_mib(lambda: 0.0)
    for sweep, c, n in sweeps(args.quick, args.sizes, args.channels, *args.base):
        w = torch.randn(c, c, 3, 3, generator=gen, dtype=torch.float64)
        conv = nn.Conv2d(c, c, 3, padding=1, bias=False).to(torch.float64)
        conv.weight.data.copy_(w)
        ref_gen = torch.Generator().manual_seed(1)
        ref_ms, ref = timed(lambda: lip.layer_spectral_norm(conv, (c, n, n), n_iter=args.ref_iters, tol=1e-12,
                                                            generator=ref_gen), 1)
        fns: Dict[str, Callable[[], float]] = {
            "exact circular": lambda: lip.circular_spectral_norm(w, n),
            "padded circular": lambda: padded_circular_bound(w, (n, n), (1, 1, 1, 1), 1),
            "gram": lambda: gram_iteration_bound(w, n + 2),
            "tn": lambda: lip.tn_bound(w, 1, restarts=args.tn_restarts, generator=torch.Generator().manual_seed(2)),
            "f4": lambda: lip.f4_bound(w, 1),
        }
        for method in METHODS:
            ms, value = timed(fns[method], args.repeats)
            mem = None if args.no_memory else round(max(0.0, peak_memory_mib(fns[method]) - floor), 2)
            table.add({"sweep": sweep, "channels": c, "n": n, "method": method, "sound": SOUND[method],
                       "value": round(value, 6), "reference": round(ref, 6),
                       "precision": abs(value - ref) / ref, "median_ms": round(ms, 3), "peak_mib": mem,
                       "reference_ms": round(ref_ms, 1), "ref_iters": args.ref_iters,
                       "memory_floor_mib": round(floor, 2)})
        print(f"  {sweep:10s} C={c:3d} n={n:3d}: ref {ref:.4f} ({ref_ms:.0f} ms) " + ", ".join(
            f"{r['method']} {r['precision']:.2e}/{r['median_ms']:.1f}ms" for r in table.rows[-len(METHODS):]),
            flush=True)
    out = table.write(Path(args.out))
    if not args.no_figure:
        figure(table.rows, Path(args.out).with_suffix(".png"), f"{device_description(device)}; {command.strip()}")
    print(f"\nCSV: {out}\n")
    print(table.markdown(["sweep", "channels", "n", "method", "sound", "precision", "median_ms", "peak_mib"],
                         "Bounds of zero-padded 3x3 convs, N(0,1) kernels"))
    return 0


def figure(rows: List[dict], path: Path, caption: str) -> None:
    from robustbench_convnorm import atomic
    from robustbench_convnorm.leaderboard.figures import figure as make

    fig, axes = make("Zero-padded 3x3 conv: bounds against power iteration on the layer",
                     f"precision = |sigma - sigma_ref| / sigma_ref (reference: power iteration on the layer); "
                     f"{caption}", size=(10, 7), rows=2, cols=2)
    for col, (sweep, xkey) in enumerate((("input size", "n"), ("channels", "channels"))):
        for method in METHODS:
            pts = sorted((r[xkey], r["precision"], r["median_ms"]) for r in rows
                         if r["sweep"] == sweep and r["method"] == method)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            axes[col].plot(xs, [max(p[1], 1e-16) for p in pts], marker="o", label=method)
            axes[2 + col].plot(xs, [p[2] for p in pts], marker="o", label=method)
        axes[col].set_yscale("log")
        axes[col].set_title(f"precision vs {sweep}", fontsize=9)
        axes[2 + col].set_yscale("log")
        axes[2 + col].set_title(f"time (ms) vs {sweep}", fontsize=9)
        axes[2 + col].set_xlabel(sweep)
    axes[1].legend(fontsize=7)
    atomic.save_figure(fig, path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    sys.exit(main())
