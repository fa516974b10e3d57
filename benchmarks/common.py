"""Helpers shared by the benchmark scripts: where a row was measured, and tables."""
from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from robustbench_convnorm import atomic


def device_description(device: torch.device) -> str:
    """The GPU's name, or the CPU's model with its logical CPUs and torch's intra-op threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {model}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} intra-op threads"


def command_line(module: str, argv: Optional[Sequence[str]]) -> str:
    """The command that reproduces this measurement."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--out" in args:  # where the CSV went is not part of what was measured
        i = args.index("--out")
        del args[i:i + 2]
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in args)


def environment(device: torch.device) -> Dict[str, object]:
    """The columns every benchmark row carries: device, torch, threads, load, date."""
    return {
        "device": device.type,
        "device_name": device_description(device),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else "",
        "load_avg_1min": f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


class Table:
    """Rows of one benchmark; each row gets the environment columns and the command."""

    def __init__(self, name: str, device: torch.device, command: str):
        self.name, self.device, self.command = name, device, command
        self.rows: List[Dict[str, object]] = []

    def add(self, row: Dict[str, object]) -> None:
        env = environment(self.device)
        self.rows.append({"benchmark": self.name, **row, **env, "command": self.command})

    def write(self, path: Path) -> Path:
        """The CSV, written atomically (no half-written file if interrupted)."""
        return write_rows(path, self.rows)

    def markdown(self, columns: Sequence[str], title: str = "") -> str:
        return markdown_table(self.rows, columns, title)


def read_rows(path: Path) -> List[Dict[str, str]]:
    """The rows of a benchmark CSV; none when the file is missing or empty."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: Sequence[Dict[str, object]]) -> Path:
    """A CSV of the union of the rows' columns, in the order they first appear,
    written atomically; an empty file when there are no rows."""
    fields: List[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    if fields:
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return atomic.write_text(Path(path), buf.getvalue())


def markdown_table(rows: Sequence[Dict[str, object]], columns: Sequence[str], title: str = "") -> str:
    """A markdown table of ``columns`` from ``rows``, headed by the device, torch
    version and command of the first row (all rows of a table share them)."""
    if not rows:
        return f"{title}: no rows\n"
    first = rows[0]
    head = [title] if title else []
    head.append(f"{first['device_name']}, torch {first['torch']}"
                + (f", {first['cpu_threads']} thread(s)" if first.get("cpu_threads") else "")
                + f", {first['date']}" + (f", load average {first['load_avg_1min']}" if first.get('load_avg_1min')
                                          else ""))
    head.append(f"command: `{first['command']}`")
    return "  \n".join(head) + "\n\n" + table_rows(rows, columns)


def table_rows(rows: Sequence[Dict[str, object]], columns: Sequence[str]) -> str:
    """The bare markdown table (header, rule, one line per row; ``|`` in a cell escaped)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)
