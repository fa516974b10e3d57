"""Issue 24's changes against the paths they replaced, in one process.

    python -m benchmarks.old_vs_new [--width 0.25] [--batch 128] [--size 32] [--steps 7] [--warmup 1]
        [--threads 1] [--only cayley,lot] [--arch lipconvnet --model-options JSON]

Free-AT replays (``benchmarks/replay.py``) of vanilla, ConvNorm with conj(X)
saved (the default), with the old image-pair packing, and rebuilt in backward
(``RECOMPUTE_INPUT_SPECTRUM``); Cayley as it is (new), with the input's
spectrum saved, and with issue 24's changes taken back one by one (autograd
through the Cayley transform, through the Fourier product, 1x1 kernels after
space-to-depth through the spectrum, Q applied on strided views: as before
issue 24); LOT new and as before (the changes it shares); and ONI
(``VARIANTS``; ``--only cayley,lot`` picks some), timed round-robin so that
a busy moment of a shared machine hits all alike; medians and ratios to vanilla, and the bytes autograd
saves in one forward (a device-independent count of activation memory).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch

from benchmarks.normalizers import saved_for_backward_bytes
from benchmarks.replay import FreeReplay, median, pick_device, time_interleaved
from robustbench_convnorm.normalizers import cayley, convnorm_fourier, fourier_product


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


def strided_product(q: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
    """Q(w) X(w) before issue 24: the complex batched matmul on strided views."""
    return (q @ xf.permute(2, 3, 1, 0)).permute(3, 2, 0, 1)


def contiguous_product(q: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
    """Q(w) X(w) on spectra made contiguous frequency-major (issue 24's first change)."""
    xf = xf.permute(2, 3, 0, 1).contiguous()
    return (xf @ q.transpose(-1, -2)).permute(2, 3, 0, 1).contiguous()


def autograd_cayley_transform(w: torch.Tensor) -> torch.Tensor:
    """cayley.cayley_transform before issue 24: autograd through the formula."""
    m, n = w.shape[-2:]
    if n > m:
        return autograd_cayley_transform(w.mH).mH
    u, v = w[..., :n, :], w[..., n:, :]
    eye = torch.eye(n, dtype=w.dtype, device=w.device)
    a = u - u.mH + v.mH @ v
    inv = torch.linalg.inv(eye + a)
    return torch.cat([(eye - a) @ inv, -2.0 * (v @ inv)], dim=-2)


def autograd_orthogonal_matrices(layer, height: int, width: int, dtype: torch.dtype = torch.float32):
    """CayleyConv2d.orthogonal_matrices before issue 24: the kernel's transform,
    then scaled, then the Cayley transform with autograd through its formula."""
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    wf = layer._kernel_transform(height, width, cdtype)
    scale = layer.alpha.to(wf.real.dtype) / layer.weight.to(wf.real.dtype).norm()
    return autograd_cayley_transform(wf * scale)


def autograd_cayley_forward(product, pointwise_direct: bool):
    """CayleyConv2d.forward (and LOT's) with autograd through rfft2, ``product``
    and irfft2 instead of the hand-written FourierProduct; 1x1 kernels (after
    space-to-depth) direct as now, or through the spectrum as before."""
    def forward(layer, x: torch.Tensor) -> torch.Tensor:
        if pointwise_direct and layer.kernel_size == (1, 1):
            y = layer._forward_pointwise(x, x.dtype)
        else:
            s = layer.stride[0]
            if s > 1:
                x = cayley.space_to_depth(x, s)
            b, c, h, w = x.shape
            layer._saw_grid(h, w)
            q = layer._q(h, w, x.dtype)
            y = torch.fft.irfft2(product(q, torch.fft.rfft2(x)), s=(h, w))
        if layer.bias is not None:
            y = y + layer.bias.view(1, -1, 1, 1)
        return y
    return forward


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


def old_forward(product, pointwise_direct: bool):
    return (cayley.CayleyConv2d, "forward", autograd_cayley_forward(product, pointwise_direct))


AUTOGRAD_Q = (cayley.CayleyConv2d, "orthogonal_matrices", autograd_orthogonal_matrices)
AUTOGRAD = old_forward(contiguous_product, True)
SPECTRUM_1X1 = old_forward(contiguous_product, False)
BEFORE_24 = old_forward(strided_product, False)
SAVED_SPECTRUM = (fourier_product, "RECOMPUTE_SPECTRUM", False)
#: label -> (normalizer, patches that bring back an old path)
VARIANTS = {
    "vanilla": ("vanilla", ()),
    "convnorm (conj(X) saved, default)": ("convnorm", ()),
    "convnorm (old packing)": ("convnorm", ((convnorm_fourier, "_pack", old_pack),)),
    "convnorm (conj(X) rebuilt)": ("convnorm", ((convnorm_fourier, "RECOMPUTE_INPUT_SPECTRUM", True),)),
    "cayley (new)": ("cayley", ()),
    "cayley (X's spectrum saved)": ("cayley", (SAVED_SPECTRUM,)),
    "cayley (autograd through the Cayley transform)": ("cayley", (AUTOGRAD_Q,)),
    "cayley (and through the Fourier product)": ("cayley", (AUTOGRAD_Q, AUTOGRAD)),
    "cayley (and 1x1 kernels through the spectrum)": ("cayley", (AUTOGRAD_Q, SPECTRUM_1X1)),
    "cayley (before issue 24: and the strided matmul)": ("cayley", (AUTOGRAD_Q, BEFORE_24)),
    "lot (new)": ("lot", ()),
    "lot (before: autograd, 1x1 through the spectrum)": ("lot", (SPECTRUM_1X1,)),
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
    p.add_argument("--arch", default="resnet18", help="a registered model (e.g. lipconvnet)")
    p.add_argument("--model-options", default="{}", help="JSON options of the model")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    only = {n for n in args.only.split(",") if n} | {"vanilla"}
    chosen = {label: v for label, v in VARIANTS.items() if len(only) == 1 or v[0] in only}
    fns, saved = {}, {}
    for label, (name, patches) in chosen.items():
        replay = FreeReplay(name, batch=args.batch, width=args.width, device=device, size=args.size,
                            arch=args.arch, model_options=json.loads(args.model_options))
        fns[label] = variant(replay, *patches)
        with patched(*patches):
            saved[label] = saved_for_backward_bytes(replay)
    times = time_interleaved(fns, device, warmup=args.warmup, repeats=args.steps)
    base = median(times["vanilla"])
    print(f"# {device}, {args.arch} {args.model_options}, width {args.width}, batch {args.batch}, {args.steps} timed replays, "
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
