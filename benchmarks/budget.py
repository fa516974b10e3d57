"""Run one part of a check in its own process, with a time budget.

A part that overruns is stopped and reported as ``cut``; the parts after it
still run. Each part is a fresh process in its own process group, so that a
hung CUDA call or torch.compile's worker processes go with it when the budget
runs out (SIGTERM to the group, SIGKILL a few seconds later).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

#: seconds between SIGTERM and SIGKILL of a part that overran
GRACE_S = 5.0


@dataclass
class PartResult:
    name: str
    status: str          # ok | failed | cut | skipped
    seconds: float
    budget_s: float
    returncode: Optional[int]
    command: str
    log: str             # path of the part's combined stdout/stderr
    note: str = ""

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def run_part(name: str, argv: List[str], budget_s: float, log_path: Path, *, cwd: Path,
             env: Optional[Dict[str, str]] = None) -> PartResult:
    """``python argv...`` with output to ``log_path`` (and echoed tail on failure)."""
    cmd = [sys.executable, *argv]
    shown = "python " + " ".join(argv)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"$ {shown}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            seconds = time.monotonic() - t0
            log.write(f"\n[gpu_check] cut at its budget of {budget_s:.0f} s\n")
            return PartResult(name, "cut", seconds, budget_s, None, shown, str(log_path),
                              f"over its budget of {budget_s:.0f} s; what it wrote before is kept")
    seconds = time.monotonic() - t0
    status = "ok" if code == 0 else "failed"
    note = "" if code == 0 else f"exit code {code}: {last_line(log_path)}"
    return PartResult(name, status, seconds, budget_s, code, shown, str(log_path), note)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the part's own process group, SIGKILL if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def last_line(path: Path) -> str:
    """The last non-empty line of a log: usually the exception that ended it."""
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
