""".ci/run proves the default suite on a machine without SLURM or Chromium:
it runs the README's `make test` under .ci/without-cluster-tools, whose PATH
hides those programs and keeps every other one."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = ["srun", "sbatch", "scontrol", "sinfo", "chromium", "chromium-browser"]


def test_ci_runs_make_test_without_slurm_or_chromium_on_path(tmp_path):
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ".ci/without-cluster-tools make test" in ci and "make test-slow" in ci
    assert ci.index(".ci/without-cluster-tools make test") < ci.index("make test-slow")  # before fixtures install
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in HIDDEN + ["kept-tool"]:
        (fake / name).write_text("#!/bin/sh\necho found\n")
        (fake / name).chmod(0o755)
    probe = "for t in " + " ".join(HIDDEN + ["kept-tool", "sh"]) + "; do command -v $t >/dev/null && echo $t; done"
    proc = subprocess.run([str(ROOT / ".ci" / "without-cluster-tools"), "sh", "-c", probe], capture_output=True,
                          text=True, timeout=120, env={"PATH": f"{fake}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["kept-tool", "sh"]
