"""One entry point for every benchmark: `python -m benchmarks.run [--only a,b]`.

Runs each benchmark module in turn on the current device (each writes its
CSV under benchmarks/out/ and prints its table; docs/benchmarks.md holds the
recorded tables with device, command and date). A benchmark that fails is
reported and the rest go on.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

BENCHMARKS = ("normalizers", "attacks", "lipschitz")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (passed to each benchmark)")
    args = p.parse_args(argv)
    chosen = [b for b in args.only.split(",") if b] or list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(BENCHMARKS)}")
    failed = []
    for name in chosen:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        try:
            code = importlib.import_module(f"benchmarks.{name}").main(["--device", args.device])
        except Exception:  # one broken benchmark must not hide the others
            traceback.print_exc()
            code = 1
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
