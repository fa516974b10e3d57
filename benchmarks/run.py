"""One entry point for every benchmark: `python -m benchmarks.run [--only a,b]`.

Runs the benchmarks of the current device's plan in turn, records each CSV
under ``benchmarks/results/<device type>/`` (cpu or cuda; one row per
measurement naming device, torch version, dtype, batch and the command),
then regenerates the measured part of docs/benchmarks.md
(``benchmarks.report``). A benchmark that fails is reported, its previous
CSV is kept, and the rest go on.

Plans (sizes chosen so that a CPU run takes minutes, not hours):

* CPU: free-AT replays of every normalizer at ResNet-18 width 0.25, batch 128
  and 512, and at full width 1.0, batch 128; the fast-path switches; the
  attacks; the Lipschitz diagnostics per layer and per model. One intra-op
  thread unless ``--threads`` says otherwise (see docs/benchmarks.md: two
  threads on a busy two-core machine measure the waiting, not the work).
* CUDA: the same at width 1.0, batch 128 and 512 (the run defaults: fp32,
  PyTorch's, until bf16 autocast is measured faster there), the fast-path
  switches (bf16 among them) at batch 128, the configs' batch size, and [CN]
  Table 8 (one epoch of natural training per normalizer on the CIFAR-10 JPEG
  copy). Each command of a lent GPU machine is limited in time:
  ``python -m benchmarks.gpu_check`` runs a short version of this plan in one
  call, and ``--from-gpu-check DIR`` records what it measured.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from benchmarks.replay import pick_device
from benchmarks.report import RESULTS, record_gpu_check, update_doc

#: record name -> (module, arguments), per device type
PLANS: Dict[str, List[Tuple[str, str, List[str]]]] = {
    "cpu": [
        ("normalizers", "normalizers", ["--batches", "128,512", "--width", "0.25"]),
        ("normalizers_full_width", "normalizers", ["--batches", "128", "--width", "1.0", "--steps", "3"]),
        ("fast_path", "fast_path", ["--batch", "128", "--width", "0.25"]),
        ("attacks", "attacks", []),
        ("lipschitz_models", "lipschitz_models", []),
        ("lipschitz", "lipschitz", ["--quick"]),
    ],
    "cuda": [
        ("normalizers", "normalizers", ["--batches", "128,512", "--width", "1.0"]),
        ("fast_path", "fast_path", ["--batch", "128", "--width", "1.0"]),
        ("attacks", "attacks", ["--batch", "1000", "--images", "1000", "--pgd-images", "10000", "--iters", "500"]),
        ("lipschitz_models", "lipschitz_models", []),
        ("lipschitz", "lipschitz", []),
        ("table8", "table8", []),
    ],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--only", default="", help="comma-separated subset of the plan's records")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default 1 on CPU)")
    p.add_argument("--no-record", action="store_true",
                   help="write CSVs to benchmarks/out/ only; leave benchmarks/results and the docs alone")
    p.add_argument("--from-gpu-check", metavar="DIR", default=None,
                   help="measure nothing: record a benchmarks.gpu_check folder under benchmarks/results/cuda/ "
                        "and regenerate docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.from_gpu_check:
        try:
            recorded = record_gpu_check(Path(args.from_gpu_check))
        except (OSError, ValueError) as err:
            print(f"nothing recorded: {err}", file=sys.stderr)
            return 2
        for path in recorded:
            print(f"recorded {path}")
        print(f"updated {update_doc()}")
        print(f"verdicts for speed.py: python -m benchmarks.verdicts {args.from_gpu_check}")
        return 0
    device = pick_device(args.device)
    plan = PLANS["cuda" if device.type == "cuda" else "cpu"]
    names = [name for name, _, _ in plan]
    chosen = [b for b in args.only.split(",") if b] or names
    unknown = set(chosen) - set(names)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; this device's plan has {', '.join(names)}")
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    out_dir = (Path(__file__).resolve().parent / "out") if args.no_record else RESULTS / device.type
    failed = []
    for name, module, extra in plan:
        if name not in chosen:
            continue
        print(f"\n=== {name} (benchmarks.{module}) ===", flush=True)
        out = out_dir / f"{name}.csv"
        cmd = ["--device", device.type, *extra, "--out", str(out.with_suffix(".csv.new"))]
        if threads:
            cmd += ["--threads", str(threads)]
        try:
            torch.manual_seed(0)
            code = importlib.import_module(f"benchmarks.{module}").main(cmd)
        except Exception:  # one broken benchmark must not hide the others
            traceback.print_exc()
            code = 1
        new = out.with_suffix(".csv.new")
        if code or not new.exists():
            failed.append(name)
            new.unlink(missing_ok=True)
        else:
            new.replace(out)  # the recorded CSV changes only when the benchmark finished
    if not args.no_record:
        print(f"\nupdated {update_doc()}")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
