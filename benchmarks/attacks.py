"""Throughput of the attacks: batched SimBA against SimBA one image at a time,
and PGD-20.

    python -m benchmarks.attacks [--device auto] [--batch N] [--images N] [--iters N]
        [--loop-images N] [--repeats N] [--threads N] [--width W]

Model: the project's small residual ``convnet`` (vanilla convs, BatchNorm, eval
mode) on 3x32x32 inputs, 10 classes, random weights with the last layer
scaled up (x30) so that the model is confident and SimBA rarely stops early;
labels are the model's own predictions, so every image starts correct.

* SimBA batched: ``attacks.simba.simba_attack`` on ``--images`` images with a
  pool of ``--batch`` (pixel basis, step 0.2, ``--iters`` iterations at most).
* SimBA one at a time: the same function with a pool of 1 on
  ``--loop-images`` images: the loop a non-batched implementation runs.
  Throughput of both = (images x iterations actually run) / seconds.
* PGD-20: ``get_evaluator("pgd", steps=20).run`` on ``--batch`` images
  (eps 8/255, step 2/255, random start); images per second.

Each measurement is repeated ``--repeats`` times after one untimed warm-up;
the table reports the median. Time: ``time.perf_counter`` around the call,
after ``torch.cuda.synchronize()`` on CUDA. Writes benchmarks/out/attacks.csv
and prints a markdown table.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from benchmarks.common import device_description

from attacks import get_evaluator
from attacks.simba import simba_attack
from robustbench_convnorm.models import build_model
from robustbench_convnorm.normalizers import get_normalizer

OUT = Path(__file__).resolve().parent / "out" / "attacks.csv"


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], float], device: torch.device, repeats: int) -> List[Dict[str, float]]:
    """fn() returns the amount of work done; one untimed warm-up, then ``repeats`` timings."""
    fn()
    runs = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        work = fn()
        sync(device)
        runs.append({"seconds": time.perf_counter() - t0, "work": work})
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=None, help="SimBA pool and PGD batch (CPU 50, CUDA 500)")
    parser.add_argument("--images", type=int, default=None, help="images for batched SimBA (default: --batch)")
    parser.add_argument("--iters", type=int, default=None, help="SimBA iteration cap (CPU 50, CUDA 500)")
    parser.add_argument("--loop-images", type=int, default=None, help="images for the one-at-a-time loop (CPU 5, CUDA 20)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--width", type=float, default=1.0)
    args = parser.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    batch = args.batch or (500 if cuda else 50)
    images = args.images or batch
    iters = args.iters or (500 if cuda else 50)
    loop_images = args.loop_images or (20 if cuda else 5)

    torch.manual_seed(0)
    model = build_model("convnet", get_normalizer("vanilla"), num_classes=10, in_channels=3,
                        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), batchnorm=True,
                        width=args.width)
    with torch.no_grad():
        model.linear.weight.mul_(30)
    model = model.to(device).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(max(images, batch, loop_images), 3, 32, 32, generator=g).to(device)
    with torch.no_grad():
        y = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])

    rows = []
    success = {}

    def simba(n, pool, key):
        def run():
            res = simba_attack(model, x[:n], y[:n], step=0.2, max_iters=iters, batch_size=pool,
                               generator=torch.Generator().manual_seed(0))
            success[key] = float(res.success.float().mean()) * 100
            return float(res.iterations.sum())
        return run

    for label, n, pool in (("SimBA batched", images, batch), ("SimBA one image at a time", loop_images, 1)):
        runs = timed(simba(n, pool, label), device, args.repeats)
        rates = [r["work"] / r["seconds"] for r in runs]
        rows.append({"measure": label, "unit": "images x iterations / s", "median": statistics.median(rates),
                     "min": min(rates), "max": max(rates), "images": n, "pool": pool, "iters_cap": iters,
                     "note": f"{success[label]:.0f}% of images broken within the cap"})

    pgd = get_evaluator("pgd", steps=20)

    def run_pgd():
        pgd.run(model, x[:batch], y[:batch], generator=torch.Generator().manual_seed(0), batch_size=batch)
        return float(batch)

    runs = timed(run_pgd, device, args.repeats)
    rates = [r["work"] / r["seconds"] for r in runs]
    rows.append({"measure": "PGD-20", "unit": "images / s", "median": statistics.median(rates), "min": min(rates),
                 "max": max(rates), "images": batch, "pool": batch, "iters_cap": 20,
                 "note": "eps 8/255, step 2/255, random start"})

    speedup = rows[0]["median"] / rows[1]["median"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    meta = {"device": device_description(device), "torch": torch.__version__, "batch": batch,
            "threads": torch.get_num_threads(), "load_avg_1min": round(load, 2),
            "model": f"convnet width {args.width:g} (vanilla + BN), 3x32x32, 10 classes",
            "command": "python -m benchmarks.attacks " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "date": _dt.date.today().isoformat(), "repeats": args.repeats}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) + list(meta))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **meta})

    print(f"device: {meta['device']}; torch {meta['torch']}; model: {meta['model']}; batch/pool {batch}; "
          f"median of {args.repeats} repeats; load average {meta['load_avg_1min']} at the end; "
          f"command: `{meta['command'].strip()}`; {meta['date']}")
    print()
    print("| measure | throughput (median) | range | images | pool | iteration cap | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['measure']} | {r['median']:.1f} {r['unit']} | {r['min']:.1f}-{r['max']:.1f} | {r['images']} | "
              f"{r['pool']} | {r['iters_cap']} | {r['note']} |")
    print()
    print(f"batched SimBA / one image at a time: {speedup:.1f}x")
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return rows


if __name__ == "__main__":
    main()
