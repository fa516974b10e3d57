"""Time of the Lipschitz diagnostics of one whole model, per normalizer.

    python -m benchmarks.lipschitz_models [--arch resnet18] [--width W] [--only a,b] [--threads N]

What a run records after training: ``robustbench_convnorm.lipschitz.model_report``
with its defaults (power iteration on every conv layer as it computes, exact
circular norms, TN / F4 / flat bounds, channel condition numbers) on a
freshly built model in eval mode at 3x32x32. One timed call per model (the
report is deterministic and long; ``time.perf_counter`` after
``torch.cuda.synchronize()`` on CUDA). Writes benchmarks/out/lipschitz_models.csv.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import Table, command_line
from benchmarks.normalizers import select
from benchmarks.replay import CIFAR_MEAN, CIFAR_STD, builtin_normalizers, fill_device_defaults, pick_device, sync
from robustbench_convnorm.lipschitz import model_report
from robustbench_convnorm.models import build_model
from robustbench_convnorm.normalizers import get_normalizer

OUT = Path(__file__).resolve().parent / "out" / "lipschitz_models.csv"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lipschitz_models", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=None, help="default: 1.0 on CUDA, 0.25 on CPU")
    p.add_argument("--only", default="", help="comma-separated normalizers (vanilla is always included)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    device = pick_device(args.device)
    fill_device_defaults(args, device)
    width = args.width
    table = Table("lipschitz_models", device, command_line("benchmarks.lipschitz_models", argv))
    for name in select(builtin_normalizers(), args.only):
        torch.manual_seed(0)
        model = build_model(args.arch, get_normalizer(name), num_classes=10, in_channels=3, mean=CIFAR_MEAN,
                            std=CIFAR_STD, batchnorm=False, width=width).to(device).eval()
        sync(device)
        t0 = time.perf_counter()
        report = model_report(model, (3, 32, 32))
        sync(device)
        seconds = time.perf_counter() - t0
        table.add({"normalizer": name, "arch": args.arch, "width": width, "dtype": "float32 (float64 exact norms)",
                   "batch": 1, "layers": len(report["layers"]), "seconds": round(seconds, 2),
                   "lip_product_log10": round(report.get("lip_product_log10", float("nan")), 3)})
        print(f"  {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    table.write(Path(args.out))
    print(table.markdown(["normalizer", "layers", "seconds", "lip_product_log10"],
                         title=f"Lipschitz diagnostics per model, {args.arch} width {width}, 3x32x32"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
