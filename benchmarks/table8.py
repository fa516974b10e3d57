"""[CN] Table 8: seconds per epoch of natural training, vanilla / ConvNorm / Cayley.

    python -m benchmarks.table8 [--data DIR] [--normalizers vanilla,convnorm,cayley]
        [--width 1.0] [--batch 128] [--train-fraction F] [--work DIR] [--out table8.csv]

The paper trained ResNet-18 on CIFAR-10 for one epoch with each normalizer
on an RTX 8000: vanilla 21 s, ConvNorm 60 s, Cayley 182 s (ratios to vanilla
1 / 2.9 / 8.7). This runs the same through the project's own run path
(``robustbench_convnorm.run.execute_run``: data on the device, the run's
default fast-path switches): ResNet-18 without BatchNorm, natural training,
batch 128, SGD lr 0.1, crop + flip, on the CIFAR-10 JPEG copy (``--data``,
default ``.data/cifar10-jpeg``; generated images with ``--synthetic`` when
the copy is not there). Each normalizer first trains a few untimed
steps (CUDA context, cuDNN and cuFFT plans, kernel loading), then one timed
epoch; ``seconds_per_epoch`` is the training loop's own epoch time (no
validation, no evaluation). The paper's loader fed the GPU from CPU worker
processes; here the data already lives on the device, so absolute times are
not the paper's protocol: compare the ratios.

Writes ``--out`` after every normalizer (a run cut short keeps its rows).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import yaml

from benchmarks import cifar_jpeg
from benchmarks.cifar_jpeg import data_section
from benchmarks.common import Table, command_line
from benchmarks.replay import pick_device
from robustbench_convnorm import atomic
from robustbench_convnorm.config import ConfigError, config_from_dict, expand_grid, parse_set, set_path
from robustbench_convnorm.run import DataCache, execute_run
from robustbench_convnorm.training import TRAIN_LOG

OUT = Path(__file__).resolve().parent / "out" / "table8.csv"
#: [CN] Table 8: seconds per epoch, ResNet-18, CIFAR-10, one RTX 8000
PAPER_SECONDS = {"vanilla": 21.0, "convnorm": 60.0, "cayley": 182.0}
PAPER_GPU = "RTX 8000"


def run_config(data: Dict, normalizer: str, *, width: float, batch: int, work: Path, device: str,
               overrides: List[Tuple[str, object]]) -> Dict:
    raw = {
        "name": "table8", "data": data, "model": {"arch": "resnet18", "width": width},
        "normalizers": [{"name": normalizer}], "batchnorm": False,
        "train": {"method": "natural", "epochs": 1, "batch_size": batch, "lr": 0.1, "momentum": 0.9,
                  "weight_decay": 1.0e-4, "schedule": "constant", "val_examples": 0, "val_pgd_steps": 0},
        "eval": {"n_examples": 256, "batch_size": 256, "checks": False, "lipschitz": False,
                 "evaluators": [{"type": "clean"}]},
        "seeds": [0], "device": device, "output_dir": str(work),
    }
    for key, value in overrides:
        set_path(raw, key, value, source="--set")
    return raw


def train_once(raw: Dict, device: torch.device, cache: DataCache, log) -> Tuple[Dict, int]:
    """The finished run's record and the number of images its epoch trained on."""
    spec = expand_grid(config_from_dict(raw, "table8"), "table8")[0]
    record = execute_run(spec, device, cache, force=True, log=log)
    if record.get("status") != "finished":
        raise RuntimeError(f"{spec.run_id}: {record.get('status')}: {record.get('error')}")
    with open(spec.run_dir / TRAIN_LOG, newline="") as f:
        epoch = list(csv.DictReader(f))[-1]
    return record, int(round(float(epoch["images_per_second"]) * float(epoch["seconds"])))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.table8", description=__doc__.split("\n\n")[0])
    cifar_jpeg.add_arguments(p)
    p.add_argument("--normalizers", default="vanilla,convnorm,cayley")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--train-fraction", type=float, default=1.0, help="a stratified subset (default: all)")
    p.add_argument("--warmup-fraction", type=float, default=0.02,
                   help="train fraction of an untimed warm-up run per normalizer (0: none)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the generated run config, e.g. --set train.amp=bf16")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", default=str(Path(__file__).resolve().parent / "out" / "table8_runs"))
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    try:
        overrides = [parse_set(item) for item in args.overrides]
    except ConfigError as err:
        p.error(str(err))
    device = pick_device(args.device)
    data_dir, missing = cifar_jpeg.from_args(args)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    names = [n for n in args.normalizers.split(",") if n]
    work = Path(args.work)
    table = Table("table8", device, command_line("benchmarks.table8", argv))
    cache = DataCache()
    base_s: Optional[float] = None
    for name in names:
        kwargs = dict(width=args.width, batch=args.batch, device=device.type, overrides=overrides)
        if args.warmup_fraction:
            warm = data_section(data_dir, args.warmup_fraction, cache=not args.no_cache)
            train_once(run_config(warm, name, work=work / "warmup", **kwargs), device, cache, log=lambda *_: None)
        data = data_section(data_dir, args.train_fraction, cache=not args.no_cache)
        raw = run_config(data, name, work=work, **kwargs)
        print(f"# {name}: one epoch", file=sys.stderr, flush=True)
        record, images = train_once(raw, device, cache, log=print)
        seconds = float(record["timings"]["train_seconds_per_epoch"])
        if name == "vanilla":
            base_s = seconds
        paper = PAPER_SECONDS.get(name)
        table.add({"normalizer": name, "arch": "resnet18", "width": args.width, "batch": args.batch,
                   "train_images": images, "dtype": "bf16 autocast" if record["config"]["train"]["amp"] == "bf16"
                   else "float32", "seconds_per_epoch": round(seconds, 2),
                   "images_per_s": round(images / seconds, 1),
                   "ratio_to_vanilla": round(seconds / base_s, 2) if base_s else "",
                   "paper_seconds": paper if paper is not None else "",
                   "paper_ratio": round(paper / PAPER_SECONDS["vanilla"], 1) if paper is not None else "",
                   "paper_gpu": PAPER_GPU, "speed": yaml.safe_dump(record.get("speed"), default_flow_style=True).strip(),
                   "data": record.get("dataset", "")})
        table.write(Path(args.out))
    atomic.write_text(work / "table8_config.yaml", yaml.safe_dump(raw, sort_keys=False))
    print(table.markdown(["normalizer", "train_images", "seconds_per_epoch", "ratio_to_vanilla", "paper_seconds",
                          "paper_ratio", "images_per_s"],
                         title=f"[CN] Table 8: one epoch of natural training, ResNet-18 width {args.width}, "
                               f"batch {args.batch}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
