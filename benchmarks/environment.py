"""What a measurement ran on: GPU, memory, driver, CUDA, cuDNN, library versions.

    python -m benchmarks.environment [--out environment.json]

Prints (and writes) one JSON object. Each field that cannot be read is
``null`` with the reason in ``problems``, never an exception: this is the
first part of the GPU check, and it must say what it found even on a machine
that is not what was expected.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from robustbench_convnorm import atomic


def _version(module: str, problems: List[str]):
    try:
        return __import__(module).__version__
    except Exception as exc:  # a missing package is a finding
        problems.append(f"{module}: {type(exc).__name__}: {exc}")
        return None


def _nvidia_smi(problems: List[str]) -> Dict[str, str]:
    if shutil.which("nvidia-smi") is None:
        problems.append("nvidia-smi: not on the PATH")
        return {}
    fields = ["name", "memory.total", "driver_version", "clocks.max.sm", "power.limit"]
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        problems.append(f"nvidia-smi: {exc}")
        return {}
    if out.returncode != 0 or not out.stdout.strip():
        problems.append(f"nvidia-smi: exit {out.returncode}: {out.stderr.strip()[:200]}")
        return {}
    values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(fields, values))


def collect() -> Dict[str, object]:
    problems: List[str] = []
    env: Dict[str, object] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
        "torch": _version("torch", problems), "torchvision": _version("torchvision", problems),
        "torchattacks": _version("torchattacks", problems), "numpy": _version("numpy", problems),
    }
    import torch

    env["cuda_available"] = torch.cuda.is_available()
    env["cuda_runtime"] = torch.version.cuda
    env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    # PyTorch's defaults that decide what "fp32" means on a GPU
    env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    env["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    env["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update({"gpu_count": torch.cuda.device_count(), "gpu": props.name,
                    "gpu_memory_gib": round(props.total_memory / 2 ** 30, 1),
                    "compute_capability": f"{props.major}.{props.minor}",
                    "multiprocessors": props.multi_processor_count})
        smi = _nvidia_smi(problems)
        env["driver"] = smi.get("driver_version")
        env["nvidia_smi"] = smi
    else:
        problems.append("torch sees no CUDA GPU: the check runs its plan on the CPU")
    env["problems"] = problems
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.environment", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = p.parse_args(argv)
    env = collect()
    print(json.dumps(env, indent=2))
    if args.out:
        atomic.write_json(Path(args.out), env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
