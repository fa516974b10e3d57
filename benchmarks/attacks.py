"""Throughput of the attacks: PGD-20, batched SimBA and SimBA one image at a time.

    python -m benchmarks.attacks [--device auto] [--arch resnet18] [--width W]
        [--batch N] [--images N] [--pgd-images N] [--iters N] [--loop-images N] [--repeats N] [--threads N]

Model: ``--arch`` (ResNet-18 by default; width 1.0 on CUDA, 0.25 on CPU),
vanilla convs without BatchNorm, eval mode, float32, on 3x32x32 inputs, 10
classes, random weights with the last layer scaled up (x30) so that the
model is confident and SimBA rarely stops early; labels are the model's own
predictions, so every image starts correct. ``seconds_at_target_size``
extrapolates the median rate to the targets' sizes: PGD-20 over the 10,000
CIFAR-10 test images; SimBA on 1000 images x 3072 iterations (an upper
bound: real images stop when broken).

* SimBA batched: ``attacks.simba.simba_attack`` on ``--images`` images with a
  pool of ``--batch`` (pixel basis, step 0.2, ``--iters`` iterations at most).
* SimBA one at a time: the same function with a pool of 1 on
  ``--loop-images`` images: the loop a non-batched implementation runs.
  Throughput of both = (images x iterations actually run) / seconds.
* PGD-20: ``get_evaluator("pgd", steps=20).run`` on ``--pgd-images`` images
  (default ``--batch``; 10000 measures the target size itself rather than
  extrapolating) in batches of ``--batch`` (eps 8/255, step 2/255, random
  start); images per second.

Each measurement is repeated ``--repeats`` times after one untimed warm-up
(PGD's is one batch, SimBA's three iterations of one pool);
the table reports the median. Time: ``time.perf_counter`` around the call,
after ``torch.cuda.synchronize()`` on CUDA. Writes benchmarks/out/attacks.csv
(one row per measure, naming device, torch version, dtype, batch and the
command) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from benchmarks.common import Table, command_line
from benchmarks.replay import fill_device_defaults, pick_device, sync

from robustbench_convnorm.attacks import get_evaluator
from robustbench_convnorm.attacks.simba import simba_attack
from robustbench_convnorm.models import build_model
from robustbench_convnorm.normalizers import get_normalizer

OUT = Path(__file__).resolve().parent / "out" / "attacks.csv"


def timed(fn: Callable[[], float], device: torch.device, repeats: int,
          warmup: Optional[Callable[[], object]] = None) -> List[Dict[str, float]]:
    """fn() returns the amount of work done; one untimed warm-up (``warmup``,
    default ``fn``), then ``repeats`` timings."""
    (warmup or fn)()
    runs = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        work = fn()
        sync(device)
        runs.append({"seconds": time.perf_counter() - t0, "work": work})
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attacks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", default="resnet18", help="resnet18, vgg16 or convnet")
    parser.add_argument("--width", type=float, default=None, help="default: 1.0 on CUDA, 0.25 on CPU")
    parser.add_argument("--batch", type=int, default=None, help="SimBA pool and PGD batch (CPU 50, CUDA 500)")
    parser.add_argument("--images", type=int, default=None, help="images for batched SimBA (default: --batch)")
    parser.add_argument("--pgd-images", type=int, default=None,
                        help="images for PGD-20, in batches of --batch (default: --batch)")
    parser.add_argument("--iters", type=int, default=None, help="SimBA iteration cap (CPU 50, CUDA 500)")
    parser.add_argument("--loop-images", type=int, default=None,
                        help="images for the one-at-a-time loop (CPU 5, CUDA 20)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    fill_device_defaults(args, device)
    cuda = device.type == "cuda"
    width = args.width
    batch = args.batch or (500 if cuda else 50)
    images = args.images or batch
    pgd_images = args.pgd_images or batch
    iters = args.iters or (500 if cuda else 50)
    loop_images = args.loop_images or (20 if cuda else 5)

    torch.manual_seed(0)
    model = build_model(args.arch, get_normalizer("vanilla"), num_classes=10, in_channels=3,
                        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), batchnorm=False, width=width)
    last = model.classifier if hasattr(model, "classifier") else model.linear
    with torch.no_grad():
        last.weight.mul_(30)
    model = model.to(device).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(max(images, batch, loop_images, pgd_images), 3, 32, 32, generator=g).to(device)
    with torch.no_grad():
        y = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])

    table = Table("attacks", device, command_line("benchmarks.attacks", argv))
    common = {"arch": args.arch, "width": width, "dtype": "float32", "repeats": args.repeats}
    success = {}

    def simba(n, pool, key, cap=iters):
        def run():
            res = simba_attack(model, x[:n], y[:n], step=0.2, max_iters=cap, batch_size=pool,
                               generator=torch.Generator().manual_seed(0))
            success[key] = float(res.success.float().mean()) * 100
            return float(res.iterations.sum())
        return run

    pgd = get_evaluator("pgd", steps=20)

    def run_pgd(n=pgd_images):
        pgd.run(model, x[:n], y[:n], generator=torch.Generator().manual_seed(0), batch_size=batch)
        return float(n)

    runs = timed(run_pgd, device, args.repeats, warmup=lambda: run_pgd(min(batch, pgd_images)))
    rates = [r["work"] / r["seconds"] for r in runs]
    table.add({"measure": "PGD-20", "unit": "images / s", "median": round(statistics.median(rates), 2),
               "min": round(min(rates), 2), "max": round(max(rates), 2), "images": pgd_images, "batch": batch,
               "iters_cap": 20, "seconds_at_target_size": round(10000 / statistics.median(rates), 1),
               "target_size": "10000 images", "note": "eps 8/255, step 2/255, random start", **common})
    table.write(Path(args.out))  # after every measure: a run cut short keeps what it measured
    for label, n, pool in (("SimBA batched", images, batch), ("SimBA one image at a time", loop_images, 1)):
        warmup = simba(min(n, pool), pool, "warm-up", cap=3)  # kernels and allocator, not the whole work
        runs = timed(simba(n, pool, label), device, args.repeats, warmup=warmup)
        rates = [r["work"] / r["seconds"] for r in runs]
        table.add({"measure": label, "unit": "images x iterations / s", "median": round(statistics.median(rates), 2),
                   "min": round(min(rates), 2), "max": round(max(rates), 2), "images": n, "batch": pool,
                   "iters_cap": iters, "seconds_at_target_size": round(1000 * 3072 / statistics.median(rates), 1),
                   "target_size": "1000 images x 3072 iterations",
                   "note": f"{success[label]:.0f}% of images broken within the cap", **common})
        table.write(Path(args.out))
    table.write(Path(args.out))
    print(table.markdown(["measure", "median", "unit", "min", "max", "images", "batch", "iters_cap",
                          "seconds_at_target_size", "note"],
                         title=f"Attacks, {args.arch} width {width}, float32, median of {args.repeats}"))
    rows = table.rows
    print(f"batched SimBA / one image at a time: {rows[1]['median'] / rows[2]['median']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
