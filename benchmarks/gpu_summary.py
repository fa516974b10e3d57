"""summary.md of a GPU check: what ran, what it measured, what it means."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from benchmarks import report
from benchmarks.common import read_rows, table_rows
from benchmarks.verdicts import render


def _table(rows: Sequence[Dict[str, object]], columns: Sequence[str]) -> str:
    if not rows:
        return "no rows (see the part's status above and its log in logs.tar.gz)\n"
    return table_rows(rows, [c for c in columns if any(str(r.get(c, "")) != "" for r in rows)])


def _environment(env: Dict) -> str:
    if not env:
        return "environment: not read (see logs.tar.gz, logs/environment.log)\n"
    gpu = (f"{env.get('gpu')} ({env.get('gpu_memory_gib')} GiB, compute capability {env.get('compute_capability')}, "
           f"driver {env.get('driver')})" if env.get("cuda_available") else "no CUDA GPU")
    lines = [f"- GPU: {gpu}",
             f"- CUDA {env.get('cuda_runtime')}, cuDNN {env.get('cudnn')}, torch {env.get('torch')}, torchvision "
             f"{env.get('torchvision')}, torchattacks {env.get('torchattacks')}, Python {env.get('python')}, "
             f"{env.get('cpus')} CPUs",
             f"- fp32 as PyTorch runs it: cuDNN TF32 {env.get('cudnn_allow_tf32')}, matmul TF32 "
             f"{env.get('matmul_allow_tf32')} (fast-path comparisons run with TF32 off)"]
    lines += [f"- problem: {p}" for p in env.get("problems", [])]
    return "\n".join(lines) + "\n"


def _targets(out: Path, rehearsal: bool = False) -> str:
    if rehearsal:
        return "not judged: a rehearsal's CPU numbers at tiny sizes say nothing about the GPU targets\n"
    rows = report.targets(cpu=False, read=report.gpu_check_reader(out))
    lines = ["| target | measured |", "|---|---|"] + [f"| {t} | {m} |" for t, m, _ in rows]
    return "\n".join(lines) + "\n"


def _tests(rows: List[Dict[str, str]]) -> str:
    if not rows:
        return "no test results (see the tests part's log)\n"
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    head = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) + "\n\n"
    shown = [r for r in rows if r["outcome"] not in ("passed", "skipped")] or rows[:40]
    return head + _table(shown, ["test", "outcome", "seconds", "message"])


def _verdicts(check: Dict, out: Path) -> List[str]:
    verdicts = check.get("verdicts", {})
    if not verdicts.get("measured_defaults"):
        return []
    return ["What `speed.MEASURED_DEFAULTS` and `AMP_AUTO` should say by these rows "
            "(`python -m benchmarks.verdicts`; a person pastes them into speed.py with this evidence):", "",
            "```python", render(verdicts["measured_defaults"], verdicts["amp_auto"], verdicts.get("notes", []),
                                read_rows(out / "fast_path.csv"), verdicts.get("device", "cuda")).rstrip(), "```", ""]


def _e2e(check: Dict, with_table: bool = True) -> List[str]:
    e2e = check.get("e2e") or {}
    if not e2e:
        return ["no result (see the e2e part's status and log)", ""]
    lines = [f"- [{'ok' if c['ok'] else 'FAILED'}] {c['check']}: {c['detail']}" for c in e2e.get("checks", [])]
    if with_table:
        lines += ["", _table([{"normalizer": n, **r["metrics"], "train_s_per_epoch": r.get("train_seconds_per_epoch"),
                               "eval_s": r.get("eval_seconds")} for n, r in e2e.get("runs", {}).items()],
                             ["normalizer", "clean_acc", "fgsm_acc", "pgd20_acc", "train_s_per_epoch", "eval_s"])]
    return lines + [""]


EQUAL_COMPUTE_COLUMNS = ["normalizer", "status", "epochs", "estimated_epoch_s", "train_seconds", "peak_memory_mb",
                         "clean_acc", "pgd20_acc", "apgd_ce_t_iterations20_targets3_acc", "certified_acc"]


def _equal_compute(check: Dict) -> List[str]:
    equal = check.get("equal_compute") or {}
    if not equal:
        return ["no result (see the equal_compute part's status and log)", ""]
    return [f"Every run trained for `{equal.get('budget')}` (configs/cifar10_budget.yaml, sliced); the run "
            "records are in logs.tar.gz (equal_compute/results/runs/), ready for `robustbench-convnorm publish`.",
            "", _table(equal.get("runs", []), EQUAL_COMPUTE_COLUMNS), ""]


def _head(check: Dict) -> List[str]:
    rehearsal = check["mode"] == "rehearsal"
    parts = check["parts"]
    lines = [f"# GPU check ({'rehearsal on the CPU' if rehearsal else 'GPU'}), {check['started']}", ""]
    if rehearsal:
        lines += ["A rehearsal: the plan ran on the CPU at tiny sizes. Its numbers show that every part runs "
                  "and writes its file; they say nothing about a GPU.", ""]
    used = sum(p["seconds"] for p in parts)
    return lines + [_environment(check.get("environment", {})),
                    f"Wall time {check['wall_s']:.0f} s (parts {used:.0f} s of {check['budget_total_s']:.0f} s "
                    f"budgeted); data: {check['data']}.", "", "## Parts", "",
                    _table([{**p, "seconds": f"{p['seconds']:.1f}", "budget_s": f"{p['budget_s']:.0f}",
                             "estimate_s (guess, 1 H100)": f"{p['estimate_s']:.0f}"} for p in parts],
                           ["name", "status", "seconds", "budget_s", "estimate_s (guess, 1 H100)", "what", "note"])]


TABLE8_COLUMNS = ["normalizer", "train_images", "seconds_per_epoch", "ratio_to_vanilla", "paper_seconds",
                  "paper_ratio", "images_per_s"]


def render_digest(check: Dict, out: Path) -> str:
    """The short version, printed last (a lent machine returns the end of the output)."""
    lines = _head(check) + ["## Speed targets", "", _targets(out, check["mode"] == "rehearsal"),
                            "## [CN] Table 8 (paper: RTX 8000)", "",
                            _table(read_rows(out / "table8.csv"), TABLE8_COLUMNS)]
    lines += _verdicts(check, out) + ["## End to end", ""] + _e2e(check, with_table=False)
    lines += ["## Equal compute (a slice of configs/cifar10_budget.yaml)", ""] + _equal_compute(check)
    return "\n".join(lines)


def render_summary(check: Dict, out: Path) -> str:
    rehearsal = check["mode"] == "rehearsal"
    lines = _head(check) + [
        "## Tests that need CUDA (`pytest -m cuda`)", "", _tests(read_rows(out / "tests.csv")),
        "## Speed targets", "", _targets(out, rehearsal),
        "## Free-AT replay per normalizer", "",
        _table(read_rows(out / "replay.csv"), ["normalizer", "batch", "width", "dtype", "images_per_s", "median_ms",
                                            "time_vs_vanilla", "peak_mem_mb", "mem_vs_vanilla"]),
        "## Fast-path switches against the plain path", "",
        _table(read_rows(out / "fast_path.csv"), ["switch", "normalizer", "baseline", "plain_ms", "switched_ms",
                                               "speedup", "rel_diff", "matches", "verdict", "first_step_s", "error"])]
    lines += _verdicts(check, out)
    lines += ["## Attacks", "",
              _table(read_rows(out / "attacks.csv"), ["measure", "median", "unit", "images", "batch", "iters_cap",
                                                   "seconds_at_target_size", "note"]),
              "## [CN] Table 8: one epoch of natural training (paper: RTX 8000)", "",
              _table(read_rows(out / "table8.csv"), TABLE8_COLUMNS + ["speed"]),
              "## End to end through `python -m robustbench_convnorm.run`", ""]
    lines += _e2e(check)
    lines += ["## Equal compute: a budgeted slice of configs/cifar10_budget.yaml", ""] + _equal_compute(check)
    where = "this folder" if rehearsal else str(out)
    lines += ["## What to do with it", "",
              f"- record the CUDA numbers: `python -m benchmarks.run --from-gpu-check {where}` (writes "
              "benchmarks/results/cuda/ and regenerates docs/benchmarks.md; refused for a rehearsal)",
              f"- the defaults: `python -m benchmarks.verdicts {where}`, pasted into "
              "robustbench_convnorm/speed.py with the date and the device",
              "- logs, configs and run records of every part: logs.tar.gz", ""]
    return "\n".join(lines)
