"""End to end through the real command: train, checkpoint, resume, evaluate.

    python -m benchmarks.e2e [--data DIR | --synthetic] [--epochs 2] [--train-fraction F]
        [--eval-images 1000] [--width 1.0] [--batch 128] [--work DIR] [--out e2e.json]

Writes a config (ResNet-18 + BN, free adversarial training m=4, eps 8/255,
vanilla and ConvNorm) and runs ``python -m robustbench_convnorm.run`` on it
twice, as a person would: first with ``--set train.stop_after_epochs=1`` (the
runs stop after one epoch, resumable), then plainly, which must resume each
run from its checkpoint, finish it and evaluate it with clean, FGSM and PGD-20
(eps 8/255, step 2/255) on ``--eval-images`` test images. The JSON lists each
check with its outcome, the two commands, and each run's metrics and times;
the exit code is 0 only when every check passed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
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
NORMALIZERS = ("vanilla", "convnorm")
METRICS = ("clean_acc", "fgsm_acc", "pgd20_acc")


def make_config(data: Dict, *, epochs: int, width: float, batch: int, eval_images: int, val_examples: int,
                work: Path, device: str) -> Dict:
    return {
        "name": "gpu-check-e2e", "data": data, "model": {"arch": "resnet18", "width": width},
        "normalizers": [{"name": n} for n in NORMALIZERS], "batchnorm": True,
        "train": {"method": "free", "epochs": epochs, "batch_size": batch, "lr": 0.1, "momentum": 0.9,
                  "weight_decay": 1.0e-4, "schedule": "multistep", "milestones": [max(1, epochs - 1)],
                  "eps": "8/255", "step": "8/255", "replays": 4, "val_examples": val_examples, "val_pgd_steps": 5},
        "eval": {"n_examples": eval_images, "batch_size": 500, "lipschitz": False,
                 "evaluators": [{"type": "clean"}, {"type": "fgsm", "eps": "8/255"},
                                {"type": "pgd", "eps": "8/255", "step": "2/255", "steps": 20}]},
        "seeds": [0], "device": device, "output_dir": str(work / "results"),
    }


def run_cli(config: Path, extra: List[str], log_path: Path) -> Dict:
    cmd = [sys.executable, "-m", "robustbench_convnorm.run", str(config), *extra]
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    atomic.write_text(log_path, res.stdout + "\n--- stderr ---\n" + res.stderr)
    return {"command": "python -m robustbench_convnorm.run " + " ".join([str(config), *extra]),
            "returncode": res.returncode, "seconds": round(time.monotonic() - t0, 1), "log": str(log_path),
            "stdout": res.stdout}


def read_runs(results: Path) -> Dict[str, Dict]:
    """normalizer -> its record, with its train_log rows and whether a checkpoint exists."""
    runs = {}
    for record_path in sorted((results / "runs").glob("*/record.json")):
        record = json.loads(record_path.read_text())
        log_path = record_path.parent / "train_log.csv"
        with open(log_path, newline="") if log_path.exists() else open(os.devnull) as f:
            record["_train_log"] = list(csv.DictReader(f))
        record["_checkpoint"] = (record_path.parent / "checkpoint.pt").exists()
        runs[record["normalizer"]] = record
    return runs


def checks_after_stop(first: Dict, runs: Dict[str, Dict]) -> List[Dict]:
    out = [{"check": "first command stops every run after one epoch (exit 1: not finished)",
            "ok": first["returncode"] == 1, "detail": f"exit code {first['returncode']}"}]
    for name in NORMALIZERS:
        r = runs.get(name, {})
        out.append({"check": f"{name}: stopped after epoch 1 with a checkpoint",
                    "ok": r.get("status") == "stopped" and r.get("_checkpoint") and len(r.get("_train_log", [])) == 1,
                    "detail": f"status {r.get('status')}, log rows {len(r.get('_train_log', []))}, "
                              f"checkpoint {r.get('_checkpoint')}"})
    return out


def checks_after_resume(second: Dict, runs: Dict[str, Dict], epochs: int, device: str) -> List[Dict]:
    out = [{"check": "second command finishes every run (exit 0)", "ok": second["returncode"] == 0,
            "detail": f"exit code {second['returncode']}"},
           {"check": "second command resumed from the checkpoints of epoch 1",
            "ok": second["stdout"].count(f"resuming from epoch 1/{epochs}") == len(NORMALIZERS),
            "detail": f"{second['stdout'].count('resuming from epoch 1/')} resume line(s) in the log"}]
    for name in NORMALIZERS:
        r = runs.get(name, {})
        metrics = r.get("metrics", {})
        values = [metrics.get(m) for m in METRICS]
        numbers = all(isinstance(v, (int, float)) and 0 <= v <= 100 for v in values)
        out.append({"check": f"{name}: finished {epochs} epochs on {device}, evaluated clean / FGSM / PGD-20",
                    "ok": r.get("status") == "finished" and len(r.get("_train_log", [])) == epochs and numbers
                    and str(r.get("device", "")).startswith(device),
                    "detail": f"status {r.get('status')}, device {r.get('device')}, epochs "
                              f"{len(r.get('_train_log', []))}, " + ", ".join(f"{m} {v}" for m, v in zip(METRICS, values))})
        if numbers:
            out.append({"check": f"{name}: attacks do not raise accuracy (FGSM, PGD-20 <= clean)",
                        "ok": values[2] <= values[0] and values[1] <= values[0],
                        "detail": ", ".join(f"{m} {v:.2f}" for m, v in zip(METRICS, values))})
    return out


def summary(runs: Dict[str, Dict]) -> Dict[str, Dict]:
    return {name: {"run_id": r.get("run_id"), "status": r.get("status"), "device": r.get("device"),
                   "metrics": {m: r.get("metrics", {}).get(m) for m in METRICS},
                   "train_seconds_per_epoch": r.get("timings", {}).get("train_seconds_per_epoch"),
                   "eval_seconds": r.get("timings", {}).get("eval_seconds"), "speed": r.get("speed"),
                   "flags": r.get("flags"), "epochs": [{k: row.get(k) for k in ("epoch", "loss", "train_acc",
                                                                              "seconds", "val_pgd_acc")}
                                                         for row in r.get("_train_log", [])]}
            for name, r in runs.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n\n")[0])
    cifar_jpeg.add_arguments(p)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-fraction", type=float, default=1.0, help="a stratified subset (default: all)")
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--val-examples", type=int, default=256, help="per-epoch validation subset (clean + PGD-5)")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="auto", help="the config's device (auto, cpu or cuda); the runs must use it")
    p.add_argument("--work", default=str(Path(__file__).resolve().parent / "out" / "e2e"))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "e2e.json"))
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the run stops after the first and resumes for the rest")
    data_dir, missing = cifar_jpeg.from_args(args)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = data_section(data_dir, args.train_fraction, cache=not args.no_cache)
    cfg = make_config(data, epochs=args.epochs, width=args.width, batch=args.batch, eval_images=args.eval_images,
                      val_examples=args.val_examples, work=work, device=args.device)
    config = atomic.write_text(work / "e2e.yaml", yaml.safe_dump(cfg, sort_keys=False))
    first = run_cli(config, ["--force", "--set", "train.stop_after_epochs=1"], work / "first.log")
    checks = checks_after_stop(first, read_runs(work / "results"))
    second = run_cli(config, [], work / "second.log")
    runs = read_runs(work / "results")
    device = args.device if args.device != "auto" else str(next(iter(runs.values()), {}).get("device", "?"))
    checks += checks_after_resume(second, runs, args.epochs, device)
    result = {"ok": all(c["ok"] for c in checks), "checks": checks, "config": str(config),
              "commands": [{k: v for k, v in c.items() if k != "stdout"} for c in (first, second)],
              "runs": summary(runs)}
    atomic.write_json(Path(args.out), result)
    for c in checks:
        print(f"[{'ok' if c['ok'] else 'FAILED'}] {c['check']}: {c['detail']}")
    return 0 if result["ok"] else 1



if __name__ == "__main__":
    sys.exit(main())
