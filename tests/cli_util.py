"""What the tests that drive the real command share: a config file from a
tiny base, the command as a subprocess running this checkout's code, and the
records it wrote."""
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_config(path: Path, output_dir, base: dict, **changes) -> Path:
    """``base`` with ``section__key=value`` (or ``section=value``) changes, as YAML at ``path``."""
    raw = json.loads(json.dumps(base))
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        if leaf:
            raw[section][leaf] = value
        else:
            raw[section] = value
    raw["output_dir"] = str(output_dir)
    Path(path).write_text(yaml.safe_dump(raw))
    return Path(path)


def records(out_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("runs/*/record.json"))}


def comparable(rec):
    """A record without what differs between two executions of one run."""
    drop = {"timings", "cost", "created", "git_sha", "config", "evaluations", "worker"}
    out = {k: v for k, v in rec.items() if k not in drop}
    out["evaluations"] = {k: {kk: vv for kk, vv in v.items() if "seconds" not in kk}
                          for k, v in rec["evaluations"].items()}
    # OMP_NUM_THREADS is the caller's shell (a launcher's worker sets it, a plain run inherits it)
    out["environment"] = {k: v for k, v in (rec.get("environment") or {}).items() if k != "omp_num_threads"}
    return out


def env(**extra):
    """The environment of a child process: this checkout first on the path, one
    thread, unbuffered, and no SLURM variables of an enclosing job (they would
    select a part of the grid)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    pythonpath = str(ROOT) + (os.pathsep + base["PYTHONPATH"] if base.get("PYTHONPATH") else "")
    return {**base, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            **{k: str(v) for k, v in extra.items()}}


def cli(*args, timeout=600, **extra_env) -> subprocess.CompletedProcess:
    """``python -m robustbench_convnorm.run ARGS``, to its end."""
    return subprocess.run([sys.executable, "-m", "robustbench_convnorm.run", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=env(**extra_env), timeout=timeout)


def start(*args, **extra_env) -> subprocess.Popen:
    """``python -m robustbench_convnorm.run ARGS`` in the background."""
    return subprocess.Popen([sys.executable, "-m", "robustbench_convnorm.run", *map(str, args)], cwd=ROOT,
                            env=env(**extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err
