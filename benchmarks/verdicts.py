"""Fast-path measurements -> what ``speed.MEASURED_DEFAULTS`` and ``AMP_AUTO`` say.

    python -m benchmarks.verdicts PATH [--device cuda]

PATH is a fast-path CSV (``benchmarks.fast_path``) or a ``benchmarks.gpu_check``
result folder (its ``fast_path.csv``; a note says when a part behind it was
cut or failed, per the folder's ``check.json``). Prints the table entries the rows
support and the evidence for each, to be pasted into
``robustbench_convnorm/speed.py`` with the date and the device. The rule is
the one the CPU table was made by: a switch is on where it measured at least
3% faster than the plain path AND matched it (the row's ``verdict``):

* channels_last, cudnn_benchmark, compile: on for the normalizers whose row
  says "on" (a tuple of names); a normalizer without a row (a plug-in, one the
  run did not reach) gets it off. channels_last for ConvNorm is read from the
  row measured on top of ConvNorm's fast path when that path is on.
* convnorm_fast: True or False from ConvNorm's row.
* optimizer and train.amp are one value for every normalizer: foreach or
  fused (bf16 autocast) is chosen when it matched for every normalizer and was
  at least 3% faster for more than half of them; of two such kernels the one
  with the larger median speedup; otherwise the plain path (the loop; fp32).
* A switch without any row (never measured on the device) keeps PyTorch's own
  default there (``speed.TORCH_DEFAULTS``; foreach SGD on CUDA).

The CPU table departs from these verdicts where a reason is written beside
it (compile: a cold compilation that a CPU-sized run does not win back; bf16:
the CPU is the correctness reference); such judgements stay with a person,
and the notes printed here give the numbers for them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from benchmarks import common
from benchmarks.report import unfinished_parts
from robustbench_convnorm.speed import SWITCHES, TORCH_DEFAULTS

PER_NORMALIZER = ("channels_last", "cudnn_benchmark", "compile")
WITH_CONVNORM_FAST = "channels_last (with convnorm_fast)"


def read_rows(path: Path) -> List[Dict[str, str]]:
    path = Path(path)
    if path.is_dir():
        path = path / "fast_path.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such fast-path CSV")
    return common.read_rows(path)


def _usable(row: Dict[str, str]) -> bool:
    return not row.get("error") and row.get("verdict") in ("on", "off")


def _on(row: Optional[Dict[str, str]]) -> bool:
    return row is not None and row.get("verdict") == "on"


def _single_choice(rows: List[Dict[str, str]]) -> Tuple[bool, float]:
    """(chosen, median speedup) for a setting shared by every normalizer."""
    if not rows or any(r.get("matches") != "True" or not _usable(r) for r in rows):
        return False, 0.0
    faster = sum(_on(r) for r in rows)
    return faster * 2 > len(rows), statistics.median(float(r["speedup"]) for r in rows)


def derive(rows: List[Dict[str, str]], device: str = "cuda") -> Tuple[Dict[str, object], bool, List[str]]:
    """(MEASURED_DEFAULTS[device], AMP_AUTO[device], notes) from fast-path rows."""
    defaults = TORCH_DEFAULTS["cuda" if device == "cuda" else "cpu"]
    by_switch: Dict[str, Dict[str, Dict[str, str]]] = {}
    for row in rows:
        by_switch.setdefault(row["switch"], {})[row["normalizer"]] = row
    notes: List[str] = [f"{r['switch']} on {r['normalizer']}: {r['error']}" for r in rows if r.get("error")]
    table: Dict[str, object] = {}

    fast = by_switch.get("convnorm_fast", {}).get("convnorm")
    table["convnorm_fast"] = _on(fast) if fast is not None and _usable(fast) else defaults["convnorm_fast"]
    for switch in PER_NORMALIZER:
        measured = by_switch.get(switch, {})
        if not measured:
            table[switch] = defaults[switch]
            continue
        on = []
        for name, row in measured.items():
            if switch == "channels_last" and name == "convnorm" and table["convnorm_fast"] \
                    and "convnorm" in by_switch.get(WITH_CONVNORM_FAST, {}):
                row = by_switch[WITH_CONVNORM_FAST]["convnorm"]  # the combination a run gets
            if _on(row):
                on.append(name)
        table[switch] = tuple(on) if on else False

    kernels = {impl: list(by_switch.get(f"optimizer={impl}", {}).values()) for impl in ("foreach", "fused")}
    if not any(kernels.values()):
        table["optimizer"] = defaults["optimizer"]
    else:
        chosen = {impl: _single_choice(r) for impl, r in kernels.items() if r}
        winners = [(speed, impl) for impl, (ok, speed) in chosen.items() if ok]
        table["optimizer"] = max(winners)[1] if winners else "for_loop"

    amp_rows = list(by_switch.get("amp=bf16", {}).values())
    amp = _single_choice(amp_rows)[0] if amp_rows else False
    for name, row in by_switch.get("compile", {}).items():
        if _on(row):
            notes.append(f"compile on {name}: {row['speedup']}x per step, but the first step (cold compilation) "
                         f"took {row.get('first_step_s', '?')} s: weigh it against a run's length")
    mismatched = [f"{r['switch']} on {r['normalizer']} (rel_diff {r['rel_diff']})" for r in rows
                  if _usable(r) and r.get("matches") == "False"]
    if mismatched:
        notes.append("did not match the plain path: " + ", ".join(mismatched))
    return {name: table[name] for name in SWITCHES}, amp, notes


def render(table: Dict[str, object], amp: bool, notes: List[str], rows: List[Dict[str, str]],
           device: str = "cuda") -> str:
    """The entries to paste into speed.py, with the evidence they come from."""
    first = rows[0] if rows else {}
    where = (f"{first.get('device_name', '?')}, torch {first.get('torch', '?')}, {first.get('date', '?')}, "
             f"ResNet-18 width {first.get('width', '?')}, batch {first.get('batch', '?')}")
    body = ", ".join(f"{k!r}: {v!r}" for k, v in table.items())
    lines = [f"    # {device.upper()}, {where} (benchmarks.fast_path; benchmarks.verdicts)",
             f"    {device!r}: {{{body}}},", f"AMP_AUTO[{device!r}] = {amp!r}"]
    lines += [f"# note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.verdicts", description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="a fast-path CSV or a benchmarks.gpu_check result folder")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args(argv)
    rows = read_rows(Path(args.path))
    table, amp, notes = derive(rows, args.device)
    check = Path(args.path) / "check.json"
    if check.is_file():  # a gpu_check folder: its fast_path.csv lacks the rows of a part that did not finish
        unfinished = unfinished_parts(json.loads(check.read_text()), "fast_path.csv")
        if unfinished:
            notes.append(f"fast_path.csv is incomplete: part(s) {', '.join(unfinished)} did not finish ok, so "
                         "the rows it did not reach are missing from what these entries are derived from")
    print(render(table, amp, notes, rows, args.device), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
