"""--launcher local: several runs at once on this machine.

    python -m robustbench_convnorm.run CONFIG --launcher local --gpus 0,1,2,3
    python -m robustbench_convnorm.run CONFIG --launcher local --workers 2    # CPU: cores shared

Each worker is a plain subprocess running one run (launch/worker.py), pinned
to its GPU with CUDA_VISIBLE_DEVICES (repeat an index to put two runs on one
GPU); on the CPU the workers share the cores, each with an equal number of
threads. A worker that finishes takes the next run of the grid. Their output
goes to ``<output_dir>/launcher/local/<run_id>.log``; this process prints one
line as each run starts and ends.

Ctrl-C (or SIGTERM) stops every worker cleanly: each receives one SIGINT,
records its run as interrupted and keeps its checkpoints; rerunning the same
command resumes them. A second Ctrl-C kills the workers outright.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..config import ConfigError, RunSpec
from ..records import LOCKED, read_record
from . import merge
from .options import LauncherOptions
from .worker import done_line, mark_lost, passed_flags, verdict_predates, worker_argv, worker_env

__all__ = ["plan_slots", "run_local", "GRACE_SECONDS"]

#: seconds the workers get to record an interruption before they are killed
GRACE_SECONDS = 120.0
_POLL = 0.25


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _visible_gpus() -> List[str]:
    import torch

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def plan_slots(opts: LauncherOptions, device, n_runs: int) -> List[Tuple[Optional[str], Optional[int]]]:
    """One (GPU, threads) per worker: at most one worker per run."""
    if opts.workers is None and opts.max_parallel is not None:
        opts.workers = opts.max_parallel  # --max-parallel means the same here
    if device.type == "cuda":
        gpus = [str(g) for g in opts.gpus] if opts.gpus else _visible_gpus()
        if opts.workers is not None and opts.gpus and opts.workers != len(opts.gpus):
            raise ConfigError(f"--workers {opts.workers} and --gpus {','.join(gpus)} disagree: --gpus gives "
                              f"one worker per listed GPU (repeat an index to share a GPU)")
        if opts.workers is not None and not opts.gpus:
            if opts.workers > len(gpus):
                raise ConfigError(f"--workers {opts.workers} but {len(gpus)} GPU(s) are visible; use at most "
                                  f"{len(gpus)}, or --gpus with repeated indices to share GPUs")
            gpus = gpus[:opts.workers]
        if not gpus:
            raise ConfigError("device is cuda but no GPU is visible; check CUDA_VISIBLE_DEVICES")
        return [(g, None) for g in gpus][:max(1, n_runs)]
    if opts.gpus:
        raise ConfigError(f"--gpus with device {device.type}: the runs would not use them; set device: cuda "
                          f"(or auto on a GPU machine), or use --workers on the CPU")
    workers = min(opts.workers or min(4, _cpu_count()), max(1, n_runs))
    threads = max(1, _cpu_count() // workers)
    return [(None, threads)] * workers


def _describe(slot: Tuple[Optional[str], Optional[int]]) -> str:
    gpu, threads = slot
    return f"GPU {gpu}" if gpu is not None else f"{threads} CPU thread(s)"


def _signal_all(running: Dict, sig) -> None:
    for proc, _, _ in running.values():
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def _stop(running: Dict, grace: float) -> None:
    """One SIGINT to each worker, then wait; SIGKILL what outlives ``grace``
    (or a second Ctrl-C)."""
    _signal_all(running, signal.SIGINT)
    deadline = time.monotonic() + grace
    try:
        while any(p.poll() is None for p, _, _ in running.values()) and time.monotonic() < deadline:
            time.sleep(_POLL)
    except KeyboardInterrupt:
        pass
    _signal_all({k: v for k, v in running.items() if v[0].poll() is None}, signal.SIGKILL)
    for proc, _, log in running.values():
        proc.wait()
        log.close()


def run_local(cfg, specs: Sequence[RunSpec], grid: Sequence[RunSpec], opts: LauncherOptions, *, args,
              device, grace: float = GRACE_SECONDS) -> int:
    slots = plan_slots(opts, device, len(specs))
    log_dir = Path(cfg.output_dir) / "launcher" / "local"
    config, overrides, flags = args.config, args.overrides, passed_flags(args)
    if args.dry_run:
        print(f"--launcher local would run {len(specs)} run(s), {len(slots)} at a time "
              f"({', '.join(_describe(s) for s in slots)}); logs in {log_dir}")
        return 0
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"{len(specs)} run(s), {len(slots)} at a time ({', '.join(_describe(s) for s in slots)}); "
          f"logs: {log_dir}/<run_id>.log")
    queue: List[RunSpec] = list(specs)
    free = list(range(len(slots)))
    running: Dict[int, tuple] = {}
    outcome: Dict[str, str] = {}
    started: Dict[str, float] = {}
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops like Ctrl-C
    try:
        while queue or running:
            while queue and free:
                slot, spec = free.pop(0), queue.pop(0)
                gpu, threads = slots[slot]
                log = open(log_dir / f"{spec.run_id}.log", "ab")
                argv = [sys.executable, "-m", "robustbench_convnorm.run",
                        *worker_argv(config, overrides, spec.run_id, flags)]
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=worker_env(threads=threads, gpu=gpu), start_new_session=True)
                running[slot] = (proc, spec, log)
                started[spec.run_id] = time.time()
                print(f"[start] {spec.run_id} on {_describe(slots[slot])}")
            time.sleep(_POLL)
            for slot, (proc, spec, log) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del running[slot]
                free.append(slot)
                outcome[spec.run_id] = _ended(spec, code, log.name, str(device), started[spec.run_id])
                print(f"[{len(outcome)}/{len(specs)}] {spec.run_id}: {outcome[spec.run_id]}")
    except KeyboardInterrupt:
        print(f"\nstopping {len(running)} worker(s): each records its run as interrupted and keeps its "
              f"checkpoint (Ctrl-C again to kill them)", file=sys.stderr)
        _stop(running, grace)
        for _, spec, _ in running.values():
            outcome[spec.run_id] = (read_record(spec.run_dir) or {}).get("status", "not started")
        print("stopped; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    merge.build_if_complete(grid, cfg.output_dir)  # a no-op when the last worker built it
    line, failed = done_line(dict(sorted(outcome.items())))
    print(line)
    return 1 if failed else 0


def _ended(spec: RunSpec, code: int, log_path: str, device: str, started: float) -> str:
    """How a worker's run ended, from its record; a worker that died without
    a verdict gets its run recorded as failed, and one that failed before
    reaching its run (bad arguments, a crash at start) is not read as the
    verdict of a record left by an earlier launch."""
    status = (read_record(spec.run_dir) or {}).get("status")
    if code == 0:  # finished, or skipped: finished already or held by another live worker
        return status if status in ("finished", "failed") else LOCKED
    if status in ("finished", "failed") and verdict_predates(spec, started):
        return (f"failed: its worker exited with code {code} and left the {status} record of an earlier "
                f"launch as it was; see {log_path}")
    if status in (None, "running"):
        reason = f"its worker exited with code {code} without finishing it; see {log_path}"
        if mark_lost(spec, device, reason):
            return f"failed ({reason})"
        return f"exited with code {code}; see {log_path}"
    return status
