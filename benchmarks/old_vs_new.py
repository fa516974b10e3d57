"""Issue 24's changes against the paths they replaced, in one process.

    python -m benchmarks.old_vs_new [--width 0.25] [--batch 128] [--size 32] [--steps 7] [--warmup 1] [--threads 1]

Free-AT replays (``benchmarks/replay.py``) of vanilla, ConvNorm with conj(X)
saved (the default), with the old image-pair packing, and rebuilt in backward
(``RECOMPUTE_INPUT_SPECTRUM``),
Cayley with Q applied on contiguous spectra (new) and on the strided views of
before (old), and ONI, timed round-robin so that a busy moment of a shared
machine hits all alike; medians and ratios to vanilla, and the bytes autograd
saves in one forward (a device-independent count of activation memory).
"""
from __future__ import annotations

import argparse
import contextlib
import sys

import torch

from benchmarks.normalizers import saved_for_backward_bytes
from benchmarks.replay import FreeReplay, median, pick_device, time_interleaved
from robustbench_convnorm.normalizers import cayley, convnorm_fourier


def old_pack(x, grid, step, dtype, conjugate):
    """ConvNorm's image-pair packing before issue 24: a zeroed grid, a negated copy."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    x = x.to(real)
    n, c, h, w = x.shape
    half, pairs = (n + 1) // 2, n // 2
    (sh, sw) = step
    buf = torch.zeros(half, c, *grid, dtype=dtype, device=x.device)
    rows, cols = slice(0, sh * h, sh), slice(0, sw * w, sw)
    imag = x[half:].neg() if conjugate else x[half:]
    torch.complex(x[:pairs], imag, out=buf[:pairs, :, rows, cols])
    if pairs < half:
        torch.view_as_real(buf)[pairs:, :, rows, cols, 0].copy_(x[pairs:half])
    return buf


def old_apply_per_frequency(q: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
    """Cayley before issue 24: the complex batched matmul on strided views."""
    return (q @ xf.permute(2, 3, 1, 0)).permute(3, 2, 0, 1)


@contextlib.contextmanager
def patched(module, name, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def variant(replay: FreeReplay, module=None, name=None, value=None):
    def run():
        if module is None:
            return replay.step()
        with patched(module, name, value):
            return replay.step()
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.old_vs_new", description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    make = lambda name: FreeReplay(name, batch=args.batch, width=args.width, device=device,
                                   size=args.size)  # noqa: E731
    replays = {n: make(n) for n in ("vanilla", "convnorm", "cayley", "oni")}
    cn_recompute = make("convnorm")
    cn_old = make("convnorm")
    cay_old = make("cayley")
    fns = {
        "vanilla": variant(replays["vanilla"]),
        "convnorm (conj(X) saved, default)": variant(replays["convnorm"]),
        "convnorm (old packing)": variant(cn_old, convnorm_fourier, "_pack", old_pack),
        "convnorm (conj(X) rebuilt)": variant(cn_recompute, convnorm_fourier, "RECOMPUTE_INPUT_SPECTRUM", True),
        "cayley (new)": variant(replays["cayley"]),
        "cayley (old strided matmul)": variant(cay_old, cayley, "apply_per_frequency", old_apply_per_frequency),
        "oni": variant(replays["oni"]),
    }
    saved = {"vanilla": saved_for_backward_bytes(replays["vanilla"]),
             "convnorm (conj(X) saved, default)": saved_for_backward_bytes(replays["convnorm"]),
             "cayley (new)": saved_for_backward_bytes(replays["cayley"]),
             "oni": saved_for_backward_bytes(replays["oni"])}
    with patched(convnorm_fourier, "RECOMPUTE_INPUT_SPECTRUM", True):
        saved["convnorm (conj(X) rebuilt)"] = saved_for_backward_bytes(cn_recompute)
    saved["convnorm (old packing)"] = saved["convnorm (conj(X) saved, default)"]
    with patched(cayley, "apply_per_frequency", old_apply_per_frequency):
        saved["cayley (old strided matmul)"] = saved_for_backward_bytes(cay_old)
    times = time_interleaved(fns, device, warmup=args.warmup, repeats=args.steps)
    base = median(times["vanilla"])
    print(f"# {device}, width {args.width}, batch {args.batch}, {args.steps} timed replays, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("| variant | median_ms | time_vs_vanilla | saved_for_backward_mb | saved_vs_vanilla |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        m = median(ts)
        print(f"| {name} | {m:,.0f} | {m / base:.2f} | {saved[name] / 2**20:.1f} | "
              f"{saved[name] / saved['vanilla']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
