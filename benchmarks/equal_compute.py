"""A budgeted slice of the equal-compute comparison (configs/cifar10_budget.yaml).

    python -m benchmarks.equal_compute [--data DIR | --synthetic] [--budget 15s]
        [--normalizers vanilla,convnorm,aol] [--eval-images 1000] [--work DIR] [--out equal_compute.json]

Takes the published comparison's config as it is (network, free AT, learning
rate per layer, evaluators) and changes only what a slice must: the
normalizers named, one seed, the wall-clock budget, the device and the number
of test images. It runs ``python -m robustbench_convnorm.run`` on it, so the
rows it produces are rows of the same table (the run ids differ: the budget is
part of them). The JSON lists each run's plan (epochs bought, the warm-up's
estimate), its cost and its metrics, plus the leaderboard rows the command
built; the exit code is 0 only when every run finished.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import yaml

from benchmarks import cifar_jpeg
from benchmarks.cifar_jpeg import data_section
from robustbench_convnorm import atomic

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cifar10_budget.yaml"
#: a plain conv, ConvNorm and the cheapest 1-Lipschitz layer: on one H100 each is
#: expected (not measured) to buy an epoch of the full training set in 15 s; the
#: dear layers (Cayley, LOT, SOC, BCOP) may not, and a run refused for that is a failed slice
DEFAULT_NORMALIZERS = "vanilla,convnorm,aol"
METRICS = ("clean_acc", "pgd20_acc", "apgd_ce_t_iterations20_targets3_acc", "certified_acc", "worst_case_acc")
COST = ("train_seconds", "train_seconds_per_epoch", "train_images_per_second", "peak_memory_mb", "params")


def make_config(base: Dict, *, data: Dict, normalizers: List[str], budget: str, eval_images: int, width: float,
                batch: int, device: str, work: Path) -> Dict:
    cfg = dict(base)
    entries = {entry.get("label") or entry["name"]: entry for entry in base["normalizers"]}
    unknown = [n for n in normalizers if n not in entries]
    if unknown:
        raise SystemExit(f"equal_compute: {unknown} not in {CONFIG.name}; choose from {', '.join(entries)}")
    cfg.update(name="gpu-check-equal-compute", data=data, normalizers=[entries[n] for n in normalizers],
               seeds=[0], device=device, output_dir=str(work / "results"))
    cfg["model"] = dict(base["model"], width=width)
    cfg["train"] = dict(base["train"], budget=budget, batch_size=batch)
    cfg["eval"] = dict(base["eval"], n_examples=eval_images)
    cfg.pop("threads", None)            # the device's own default
    cfg.pop("reproducible", None)       # a CPU kernel-path pin; nothing to pin on a GPU
    return cfg


def read_records(results: Path) -> List[Dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*/record.json"))]


def summarize(record: Dict) -> Dict:
    budget = record.get("budget") or {}
    cost = record.get("cost") or {}
    metrics = record.get("metrics") or {}
    return {"normalizer": record.get("normalizer"), "run_id": record.get("run_id"), "status": record.get("status"),
            "device": record.get("device"), "budget": budget.get("budget"), "epochs": budget.get("epochs"),
            "estimated_epoch_s": budget.get("estimated_epoch_seconds"),
            **{k: cost.get(k) for k in COST}, **{m: metrics.get(m) for m in METRICS},
            "flags": record.get("flags")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.equal_compute", description=__doc__.split("\n\n")[0])
    cifar_jpeg.add_arguments(p)
    p.add_argument("--budget", default="15s", help="train.budget of every run (a time: '15s', '2m')")
    p.add_argument("--normalizers", default=DEFAULT_NORMALIZERS,
                   help="comma-separated labels of the config's models (a normalizer's name unless it has a label)")
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--width", type=float, default=None, help="the model width (default: the config's)")
    p.add_argument("--batch", type=int, default=None, help="the training batch (default: the config's)")
    p.add_argument("--device", default="auto", help="the config's device (auto, cpu or cuda)")
    p.add_argument("--work", default=str(Path(__file__).resolve().parent / "out" / "equal_compute"))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "equal_compute.json"))
    args = p.parse_args(argv)
    data_dir, missing = cifar_jpeg.from_args(args)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    base = yaml.safe_load(CONFIG.read_text())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = make_config(base, data=data_section(data_dir, cache=not args.no_cache),
                      normalizers=[n for n in args.normalizers.split(",") if n], budget=args.budget,
                      eval_images=args.eval_images, width=args.width or base["model"]["width"],
                      batch=args.batch or base["train"]["batch_size"], device=args.device, work=work)
    config = atomic.write_text(work / "equal_compute.yaml", yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "robustbench_convnorm.run", str(config)]
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    atomic.write_text(work / "run.log", res.stdout + "\n--- stderr ---\n" + res.stderr)
    records = read_records(work / "results")
    board = work / "results" / "leaderboard.csv"
    rows = list(csv.DictReader(open(board, newline=""))) if board.exists() else []
    finished = [r for r in records if r.get("status") == "finished"]
    result = {"ok": res.returncode == 0 and len(finished) == len(cfg["normalizers"]),
              "command": "python -m robustbench_convnorm.run " + str(config), "returncode": res.returncode,
              "seconds": round(time.monotonic() - t0, 1), "budget": args.budget, "config": str(config),
              "runs": [summarize(r) for r in records], "leaderboard": rows}
    atomic.write_json(Path(args.out), result)
    for run in result["runs"]:
        print(f"{run['normalizer']}: {run['status']}, {run['epochs']} epoch(s) for {run['budget']}, "
              + ", ".join(f"{m} {run[m]}" for m in METRICS if run[m] is not None))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
