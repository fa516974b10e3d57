"""The GPU check: everything this project needs measured on a GPU, in one command.

    python -m benchmarks.gpu_check [--out DIR] [--data DIR] [--only a,b] [--rehearse] [--keep-work]
    make gpu-check                   # the same, into benchmarks/out/gpu_check/

Made for a lent GPU machine that gives one command about ten minutes and
sends back a few files: the parts below run in order, each in its own process
with a time budget (a part that overruns is stopped and reported as ``cut``;
the parts after it still run), and every result lands in ``--out`` as at most
eight files (``OUTPUTS``). The budgets add up to 515 s on one H100 (``PARTS``;
the estimates beside them are guesses, to be replaced by what a run reports).

``--rehearse`` runs the same plan on the CPU at tiny sizes (a few hundred
images of the CIFAR-10 JPEG copy when it is at hand, generated images
otherwise) and writes the same files: CI runs it, so the command a GPU
machine gets has run before it gets there. docs/benchmarks.md ("The GPU
check") gives the preparation (the torchattacks wheel and the data travel
with the checkout) and the device command.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from benchmarks import cifar_jpeg
from benchmarks.budget import PartResult, run_part
from benchmarks.common import read_rows, write_rows
from benchmarks.gpu_summary import render_digest, render_summary
from benchmarks.report import GPU_CHECK_PARTS
from benchmarks.verdicts import derive
from robustbench_convnorm import atomic

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "gpu_check"
#: every file the check writes into --out (the device machine sends back at most 8)
OUTPUTS = ("summary.md", "check.json", "tests.csv", "replay.csv", "fast_path.csv", "attacks.csv", "table8.csv",
           "logs.tar.gz")
FAST_PATH_SWITCHES = ("channels_last,channels_last (with convnorm_fast),cudnn_benchmark,optimizer=foreach,"
                      "optimizer=fused,convnorm_fast,amp=bf16")
COMPILE_NORMALIZERS = "vanilla,convnorm"
#: rehearsals compare the switches on the Table 8 trio: plain, Fourier and Cayley layers
REHEARSAL_NORMALIZERS = "vanilla,convnorm,cayley"
TINY = ["--width", "0.0625", "--device", "cpu"]


@dataclass
class Context:
    work: Path
    data: Optional[Path]      # the CIFAR-10 JPEG copy (tiny copy when rehearsing), None: generated images
    rehearse: bool

    def data_args(self) -> List[str]:
        return ["--data", str(self.data)] if self.data else ["--synthetic"]


@dataclass(frozen=True)
class Part:
    name: str
    budget_s: float      # the cap on one H100
    estimate_s: float    # a guess of its time on one H100, not a measurement
    what: str
    argv: Callable[[Context], List[str]]


def cuda_test_files() -> List[str]:
    """The test modules that mark a test ``cuda`` (collecting only those saves
    importing the whole suite); all of tests/ if none does."""
    files = [str(f.relative_to(ROOT)) for f in sorted((ROOT / "tests").glob("test_*.py"))
             if "mark.cuda" in f.read_text()]
    return files or ["tests"]


def _tests(c: Context) -> List[str]:
    return ["-m", "pytest", "-m", "cuda", "-q", "-rA", "-p", "no:cacheprovider", "--junitxml",
            str(c.work / "junit.xml"), *cuda_test_files()]


def _replay(c: Context) -> List[str]:
    size = (["--batches", "4,8", "--steps", "1", "--warmup", "0", "--threads", "1", "--no-memory", *TINY]
            if c.rehearse else ["--batches", "128,512", "--width", "1.0", "--steps", "10", "--warmup", "3"])
    return ["-m", "benchmarks.normalizers", *size, "--out", str(c.work / "replay.csv")]


def _fast_path(switches: str, out: str, normalizers: Optional[str], rehearsal_normalizers: str,
               rehearsal_extra: Sequence[str] = ()) -> Callable[[Context], List[str]]:
    def argv(c: Context) -> List[str]:
        if c.rehearse:
            size = ["--batch", "4", "--steps", "1", "--warmup", "0", "--threads", "1", *TINY,
                    "--normalizers", rehearsal_normalizers, *rehearsal_extra]
        else:
            size = ["--batch", "128", "--width", "1.0", "--steps", "10", "--warmup", "3"]
            size += ["--normalizers", normalizers] if normalizers else []
        return ["-m", "benchmarks.fast_path", "--switches", switches, *size, "--out", str(c.work / out)]
    return argv


def _attacks(c: Context) -> List[str]:
    size = (["--batch", "8", "--images", "8", "--pgd-images", "16", "--iters", "5", "--loop-images", "1",
             "--threads", "1", *TINY] if c.rehearse else
            ["--batch", "1000", "--images", "1000", "--pgd-images", "10000", "--iters", "1000", "--loop-images", "2"])
    return ["-m", "benchmarks.attacks", *size, "--repeats", "1", "--out", str(c.work / "attacks.csv")]


def _table8(c: Context) -> List[str]:
    size = (["--batch", "32", "--warmup-fraction", "0", "--no-cache", *TINY] if c.rehearse else ["--device", "cuda"])
    return ["-m", "benchmarks.table8", *c.data_args(), *size, "--work", str(c.work / "table8"),
            "--out", str(c.work / "table8.csv")]


def _e2e(c: Context) -> List[str]:
    size = (["--batch", "32", "--eval-images", "20", "--val-examples", "20", "--no-cache", *TINY] if c.rehearse
            else ["--train-fraction", "0.2", "--eval-images", "1000", "--device", "cuda"])
    return ["-m", "benchmarks.e2e", *c.data_args(), *size, "--work", str(c.work / "e2e"),
            "--out", str(c.work / "e2e.json")]


def _equal_compute(c: Context) -> List[str]:
    size = (["--budget", "3s", "--batch", "32", "--eval-images", "20", "--no-cache", *TINY] if c.rehearse
            else ["--budget", "15s", "--eval-images", "1000", "--device", "cuda"])
    return ["-m", "benchmarks.equal_compute", *c.data_args(), *size, "--work", str(c.work / "equal_compute"),
            "--out", str(c.work / "equal_compute.json")]


#: In order. Budgets are caps (515 s together, leaving 25 s of the nine
#: minutes for the check's own start-up and packing); estimates are guesses
#: for one H100 from the CPU measurements and the paper's RTX 8000 timings,
#: to be replaced by what a GPU run reports. compile: two cold compilations
#: per normalizer (the training step, and the eval-mode forward of the probe).
PARTS: List[Part] = [
    Part("environment", 15, 5, "GPU, memory, driver, CUDA, cuDNN, torch and torchattacks versions",
         lambda c: ["-m", "benchmarks.environment", "--out", str(c.work / "environment.json")]),
    Part("tests", 40, 20, "the tests that need CUDA (pytest -m cuda), each with its outcome", _tests),
    Part("replay", 40, 30, "free-AT replay per normalizer, ResNet-18 width 1.0, batch 128 and 512", _replay),
    Part("fast_path", 80, 55, "each fast-path switch and bf16 autocast against the plain path, batch 128",
         _fast_path(FAST_PATH_SWITCHES, "fast_path.csv", None, REHEARSAL_NORMALIZERS)),
    Part("compile", 75, 60, "torch.compile against the plain path (vanilla, ConvNorm), cold compilations included",
         # rehearsal: aot_eager traces like inductor without generating code (minutes less on a CPU)
         _fast_path("compile", "compile.csv", COMPILE_NORMALIZERS, "vanilla", ["--compile-backend", "aot_eager"])),
    Part("attacks", 40, 30, "PGD-20 over 10,000 images; SimBA on 1000 images (1000 iterations, extrapolated)",
         _attacks),
    Part("table8", 90, 75, "[CN] Table 8: one epoch of natural training, vanilla / ConvNorm / Cayley", _table8),
    Part("e2e", 55, 40, "robustbench_convnorm.run end to end: free AT, stop after epoch 1, resume, evaluate",
         _e2e),
    Part("equal_compute", 80, 65, "configs/cifar10_budget.yaml sliced: vanilla, ConvNorm, AOL, 15 s of free AT "
         "each on the 50,000 JPEG images, evaluated on 1000 test images", _equal_compute),
]
#: budgets when rehearsing on a (possibly busy) CPU: generous, since a cut
#: part would fail the rehearsal that CI runs
REHEARSAL_BUDGET_S = 150


def junit_rows(path: Path) -> List[Dict[str, object]]:
    """One row per test of a pytest junit XML: id, outcome, seconds, message."""
    if not path.exists():
        return []
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or "").splitlines()[0][:300] if child.get("message") else ""
        rows.append({"test": f"{case.get('classname', '')}::{case.get('name', '')}", "outcome": outcome,
                     "seconds": round(float(case.get("time") or 0), 2), "message": message})
    return rows


def pack_logs(work: Path, target: Path) -> None:
    """Logs, configs, records and small CSVs of the work folder (no checkpoints)."""
    keep = (".log", ".yaml", ".json", ".csv", ".xml", ".md")
    tmp = atomic.temp_name(target)
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            if path.is_file() and path.suffix in keep and path.stat().st_size < 4 * 2 ** 20:
                tar.add(path, arcname=str(path.relative_to(work)))
    os.replace(tmp, target)


def prepare_data(args, work: Path) -> Optional[Path]:
    found = cifar_jpeg.find(args.data)
    if found is None or not args.rehearse:
        return found
    return cifar_jpeg.tiny_copy(found, work / "tiny-data", {"train": 10, "test": 5})


def part_env(rehearse: bool) -> Dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if rehearse:  # a busy CPU: one thread measures the work, not the waiting
        env["OMP_NUM_THREADS"] = "1"
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(OUT), help=f"result folder (default {OUT.relative_to(ROOT)}; $OUT on a "
                                                   "lent machine)")
    p.add_argument("--data", default=None, help="folder with the CIFAR-10 JPEG train.zip and test.zip "
                                                "(default: .data/cifar10-jpeg; generated images when absent)")
    p.add_argument("--only", default="", help=f"comma-separated parts ({', '.join(x.name for x in PARTS)}); "
                                              "environment always runs")
    p.add_argument("--rehearse", action="store_true", help="the same plan on the CPU at tiny sizes")
    p.add_argument("--work", default=None, help="folder for logs, runs and checkpoints (default: a temporary one)")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder (default: removed at the end)")
    args = p.parse_args(argv)
    names = [x.name for x in PARTS]
    chosen = {n for n in args.only.split(",") if n} or set(names)
    if chosen - set(names):
        p.error(f"unknown part(s) {sorted(chosen - set(names))}; parts: {', '.join(names)}")
    chosen.add("environment")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.monotonic()
    try:
        ctx = Context(work, prepare_data(args, work), args.rehearse)
    except FileNotFoundError as err:
        p.error(str(err))
    env = part_env(args.rehearse)
    results: List[PartResult] = []
    environment: Dict = {}
    print(f"gpu_check ({'rehearsal on the CPU' if args.rehearse else 'GPU'}): work {work}, out {out}", flush=True)
    for part in PARTS:
        budget = REHEARSAL_BUDGET_S if args.rehearse else part.budget_s
        argv_part = part.argv(ctx)
        if part.name not in chosen:
            results.append(PartResult(part.name, "skipped", 0.0, budget, None, "", "", "not in --only"))
            continue
        if part.name != "environment" and not args.rehearse and not environment.get("cuda_available"):
            results.append(PartResult(part.name, "skipped", 0.0, budget, None, "", "",
                                      "no CUDA GPU: run with --rehearse on a CPU"))
            continue
        print(f"[{time.monotonic() - t0:6.1f} s] {part.name} (budget {budget:.0f} s): {part.what}", flush=True)
        result = run_part(part.name, argv_part, budget, work / "logs" / f"{part.name}.log", cwd=ROOT, env=env)
        results.append(result)
        print(f"[{time.monotonic() - t0:6.1f} s] {part.name}: {result.status} in {result.seconds:.1f} s"
              + (f" ({result.note})" if result.note else ""), flush=True)
        if part.name == "environment" and (work / "environment.json").exists():
            environment = json.loads((work / "environment.json").read_text())
    wall_s = time.monotonic() - t0

    tests = junit_rows(work / "junit.xml")
    write_rows(out / "tests.csv", tests)
    merged = {name: [row for part in parts for row in read_rows(work / f"{part}.csv")]
              for name, parts in GPU_CHECK_PARTS.items()}  # each part writes <part>.csv into the work folder
    for name, rows in merged.items():
        write_rows(out / name, rows)
    fast_rows = merged["fast_path.csv"]
    device = "cuda" if environment.get("cuda_available") and not args.rehearse else "cpu"
    table, amp, notes = derive(fast_rows, device) if fast_rows else ({}, False, ["no fast-path rows"])
    e2e = json.loads((work / "e2e.json").read_text()) if (work / "e2e.json").exists() else {}
    equal = (json.loads((work / "equal_compute.json").read_text()) if (work / "equal_compute.json").exists()
             else {})
    check = {
        "mode": "rehearsal" if args.rehearse else "gpu", "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": round(wall_s, 1), "budget_total_s": sum(r.budget_s for r in results if r.status != "skipped"),
        "data": str(ctx.data) if ctx.data else "generated images (no CIFAR-10 JPEG copy found)",
        "parts": [dict(r.as_dict(), estimate_s=next(x.estimate_s for x in PARTS if x.name == r.name),
                       what=next(x.what for x in PARTS if x.name == r.name)) for r in results],
        "environment": environment, "e2e": e2e, "equal_compute": equal,
        "verdicts": {"device": device, "measured_defaults": table, "amp_auto": amp, "notes": notes},
        "files": list(OUTPUTS),
    }
    atomic.write_json(out / "check.json", check)
    atomic.write_text(out / "summary.md", render_summary(check, out))
    pack_logs(work, out / "logs.tar.gz")
    if not args.keep_work and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(render_digest(check, out))
    bad = [r.name for r in results if r.status not in ("ok", "skipped")]
    print(f"gpu_check: {len(results) - len(bad)} part(s) ok or skipped, {len(bad)} not"
          + (f" ({', '.join(bad)})" if bad else "") + f"; {wall_s:.0f} s; files in {out} (summary.md in full)")
    no_gpu = not args.rehearse and not environment.get("cuda_available")
    if no_gpu:
        print("gpu_check: torch sees no CUDA GPU, so nothing was measured: use --rehearse on a CPU", file=sys.stderr)
    return 1 if bad or no_gpu else 0


if __name__ == "__main__":
    sys.exit(main())
