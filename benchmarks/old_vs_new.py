"""Issue 24's changes against the paths they replaced, in one process.

    python -m benchmarks.old_vs_new [--width 0.25] [--batch 128] [--size 32] [--steps 7] [--warmup 1]
        [--threads 1] [--only cayley,lot]

Free-AT replays (``benchmarks/replay.py``) of vanilla, ConvNorm with conj(X)
saved (the default), with the old image-pair packing, and rebuilt in backward
(``RECOMPUTE_INPUT_SPECTRUM``); Cayley and LOT as they are (new), with their
1x1 kernels (after space-to-depth) taken through the spectrum as before, and
Cayley as before issue 24 (also Q applied on strided views); and ONI
(``VARIANTS``; ``--only cayley,lot`` picks some), timed round-robin so that
a busy moment of a shared machine hits all alike; medians and ratios to vanilla, and the bytes autograd
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


def fourier_cayley_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """CayleyConv2d.forward (and LOT's) before the direct route for 1x1
    kernels: every layer through its spectrum, Q computed at every frequency."""
    s = layer.stride[0]
    if s > 1:
        x = cayley.space_to_depth(x, s)
    b, c, h, w = x.shape
    layer._saw_grid(h, w)
    q = layer._q(h, w, x.dtype)
    y = torch.fft.irfft2(cayley.apply_per_frequency(q, torch.fft.rfft2(x)), s=(h, w))
    if layer.bias is not None:
        y = y + layer.bias.view(1, -1, 1, 1)
    return y


@contextlib.contextmanager
def patched(*patches):
    """Set (owner, attribute, value) for each patch; restore them all afterwards."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def variant(replay: FreeReplay, *patches):
    def run():
        with patched(*patches):
            return replay.step()
    return run


SPECTRUM_1X1 = (cayley.CayleyConv2d, "forward", fourier_cayley_forward)
OLD_MATMUL = (cayley, "apply_per_frequency", old_apply_per_frequency)
#: label -> (normalizer, patches that bring back an old path)
VARIANTS = {
    "vanilla": ("vanilla", ()),
    "convnorm (conj(X) saved, default)": ("convnorm", ()),
    "convnorm (old packing)": ("convnorm", ((convnorm_fourier, "_pack", old_pack),)),
    "convnorm (conj(X) rebuilt)": ("convnorm", ((convnorm_fourier, "RECOMPUTE_INPUT_SPECTRUM", True),)),
    "cayley (new)": ("cayley", ()),
    "cayley (1x1 kernels through the spectrum)": ("cayley", (SPECTRUM_1X1,)),
    "cayley (before issue 24: and the strided matmul)": ("cayley", (SPECTRUM_1X1, OLD_MATMUL)),
    "lot (new)": ("lot", ()),
    "lot (1x1 kernels through the spectrum)": ("lot", (SPECTRUM_1X1,)),
    "oni": ("oni", ()),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.old_vs_new", description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", default="", help="comma-separated normalizers (vanilla always runs)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    only = {n for n in args.only.split(",") if n} | {"vanilla"}
    chosen = {label: v for label, v in VARIANTS.items() if len(only) == 1 or v[0] in only}
    fns, saved = {}, {}
    for label, (name, patches) in chosen.items():
        replay = FreeReplay(name, batch=args.batch, width=args.width, device=device, size=args.size)
        fns[label] = variant(replay, *patches)
        with patched(*patches):
            saved[label] = saved_for_backward_bytes(replay)
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
