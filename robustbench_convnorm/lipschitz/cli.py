"""``python -m robustbench_convnorm.lipschitz``: the report of a saved model,
or Table 9 of a results directory. Bad input ends in one line on stderr
that names the problem and the fix, and exit status 2."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .. import atomic
from .formatting import format_report
from .layers import InputShapeError, find_conv_layers
from .plot import plot_layer_norms
from .report import _nonfinite, model_report
from .convnorm_table9 import format_table9, read_records, record_paths, table9

__all__ = ["CLIError", "main"]

PROG = "python -m robustbench_convnorm.lipschitz"
CHECKPOINT_HINT = "pass a checkpoint.pt written by a run (results/<grid>/runs/<run_id>/checkpoint.pt)"
PLOT_FORMATS = (".png", ".pdf", ".svg")


class CLIError(Exception):
    """Bad input: the message names the problem and the fix."""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Print the per-layer spectral norms and bounds of a saved "
                                "model, or the condition-number Table 9 of a results directory.")
    p.add_argument("checkpoint", help="a checkpoint written by the harness (checkpoint.pt); with --table9, a "
                   "results directory (its runs/*/record.json)")
    p.add_argument("--table9", action="store_true",
                   help="print the condition-number improvement over vanilla ([CN] Table 9) of a results directory")
    p.add_argument("--table9-mode", choices=("difference", "log_ratio"), default="difference")
    p.add_argument("--table9-key", default="channel_cond",
                   help="the per-layer value compared (channel_cond, channel_cond_preaffine, channel_cond_weight)")
    p.add_argument("--input-shape", type=_positive, nargs=3, metavar=("C", "H", "W"),
                   help="input shape (default: from the checkpoint, else C from the model and 32x32)")
    p.add_argument("--power-iters", type=_positive, default=100)
    p.add_argument("--tn-restarts", type=_non_negative, default=8, help="random HOPM starts per round")
    p.add_argument("--tn-rounds", type=_positive, default=4, help="most HOPM rounds (1: no confirmation)")
    p.add_argument("--no-exact", action="store_true", help="skip the exact circular norms")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--plot", metavar="PATH", help="also write the per-layer spectral norm plot (.png, .pdf, .svg)")
    return p


# ----------------------------------------------------------------------------
# Checks of the input, each raising CLIError
# ----------------------------------------------------------------------------

def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name}: torch sees no CUDA GPU on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here; "
                           f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":
        raise CLIError(f"--device {name}: only cpu and cuda are supported; use --device cpu")
    return device


def _writable(option: str, path: Optional[str], suffixes: Optional[Tuple[str, ...]] = None) -> None:
    """Fail before the (long) report when an output path cannot be written."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{option} {p} is a directory; give a file path (in it, for instance)")
    if suffixes and p.suffix.lower() not in suffixes:
        raise CLIError(f"{option} {p}: the suffix {p.suffix or '(none)'!r} is not a figure format; "
                       f"use one of {', '.join(suffixes)}")
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise CLIError(f"{option} {p}: {parent} is not a writable directory; pick another path")


def _checkpoint_file(path: Path) -> Path:
    if not path.exists():
        raise CLIError(f"{path}: no such file; {CHECKPOINT_HINT}")
    if path.is_dir():
        inside = path / "checkpoint.pt"
        if inside.is_file():
            raise CLIError(f"{path} is a directory; pass the checkpoint in it: {inside}")
        if record_paths(path):
            raise CLIError(f"{path} is a results directory; add --table9 for its Table 9, or {CHECKPOINT_HINT}")
        raise CLIError(f"{path} is a directory, not a checkpoint; {CHECKPOINT_HINT}")
    return path


def _load(path: Path) -> Dict[str, Any]:
    from ..checkpoints import load_checkpoint

    try:
        ckpt = load_checkpoint(path, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means "not our checkpoint"
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CLIError(f"{path}: not a readable torch checkpoint ({first}); {CHECKPOINT_HINT}") from None
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CLIError(f"{path} holds a plain state_dict (tensors only), which does not say how to build the model; "
                       f"{CHECKPOINT_HINT}, or build the model in Python and call "
                       f"robustbench_convnorm.lipschitz.model_report(model, (C, H, W))")
    missing = [k for k in ("model", "run_config", "model_meta") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CLIError(f"{path} is not a harness checkpoint (no {', '.join(missing)}); {CHECKPOINT_HINT}")
    return ckpt


def _input_shape(args, ckpt: Dict[str, Any], model: nn.Module) -> Tuple[List[int], str]:
    if args.input_shape:
        return list(args.input_shape), "from --input-shape"
    meta = ckpt.get("model_meta") or {}
    try:
        shape = [int(meta["in_channels"])] + [int(v) for v in meta["image_size"]]
        if len(shape) == 3:
            return shape, "from the checkpoint"
    except (KeyError, TypeError, ValueError):
        pass
    channels = None
    for _, m in find_conv_layers(model):
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 4:
            channels = int(w.shape[1]) * int(getattr(m, "groups", 1))
            break
    return [channels or 3, 32, 32], "guessed (pass --input-shape C H W to set it)"


# ----------------------------------------------------------------------------
# The two commands
# ----------------------------------------------------------------------------

def _table9(args) -> int:
    root = Path(args.checkpoint)
    hint = "pass a results directory (a grid's output_dir, holding runs/<run_id>/record.json)"
    if not root.exists():
        raise CLIError(f"{root}: no such directory; {hint}")
    if not root.is_dir():
        raise CLIError(f"{root} is a file, not a directory; {hint}")
    paths = record_paths(root)
    if not paths:
        raise CLIError(f"{root}: no runs/*/record.json in it; {hint}")
    records, problems = read_records(root)
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    if not records:
        raise CLIError(f"{root}: none of its {len(paths)} records could be read; rerun those runs or pass another "
                       f"directory")
    rows = table9(records, key=args.table9_key, mode=args.table9_mode)
    print(f"# Mean improvement of {args.table9_key} over vanilla ({args.table9_mode}), "
          f"{len(records)} records in {root}\n")
    print(format_table9(rows) if rows else "(no finished runs with Lipschitz data and a vanilla baseline)")
    return 0


def _report(args) -> int:
    device = _device(args.device)
    _writable("--json", args.json)
    _writable("--plot", args.plot, PLOT_FORMATS)
    path = _checkpoint_file(Path(args.checkpoint))
    ckpt = _load(path)
    from ..checkpoints import load_model

    try:
        model, _ = load_model(path, device=device)
    except Exception as err:  # noqa: BLE001 - a config or state this version cannot rebuild
        raise CLIError(f"{path}: cannot rebuild the model from its saved config and weights "
                       f"({type(err).__name__}: {str(err).strip()[:300]}); it was probably written by another "
                       f"version of the harness: use that version, or rebuild the model in Python") from None
    bad = _nonfinite(model)
    if bad:
        raise CLIError(f"{path}: the model's weights hold NaN or inf ({len(bad)} tensors, e.g. "
                       f"{', '.join(bad[:3])}): the run diverged before this checkpoint; use an earlier "
                       f"checkpoint or rerun with a lower learning rate")
    shape, how = _input_shape(args, ckpt, model)
    try:
        report = model_report(model, shape, power_iters=args.power_iters, tn_restarts=args.tn_restarts,
                              tn_rounds=args.tn_rounds, exact=not args.no_exact)
    except InputShapeError as err:
        raise CLIError(f"{err} (input shape {how}); pass --input-shape C H W") from None
    print(f"# Lipschitz report: {path} (input shape {shape}, {how})\n")
    print(format_report(report))
    try:
        if args.json:
            atomic.write_json(args.json, report)
        if args.plot:
            plot_layer_norms(report, args.plot, title=f"layer spectral norms: {path.parent.name}")
    except OSError as err:
        raise CLIError(f"cannot write {err.filename or 'an output'}: {err.strerror}; pick a writable path") from None
    return 0


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """Run the CLI; returns the exit status (2 and one line on stderr for bad
    input; argparse's own errors exit 2 through SystemExit)."""
    args = _parser(prog).parse_args(argv)
    try:
        return _table9(args) if args.table9 else _report(args)
    except CLIError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
