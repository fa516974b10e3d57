"""A real one-node SLURM cluster on localhost for the tests (root only).

Debian's slurm-wlm (slurmctld, slurmd) and munge, installed with apt-get
when missing, configured in a temporary folder (its own munge key and socket,
its own ports, state and spool), started as root and stopped at the end.
Nothing outside the folder is configured; ``SLURM_CONF`` points the client
commands (sbatch, squeue, scontrol, and submitit through them) at it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict

PACKAGES = ["slurm-wlm", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd"]


class ClusterError(RuntimeError):
    pass


def _run(cmd, env=None, timeout=600, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): "
                           f"{(proc.stdout + proc.stderr).strip()[-1500:]}")
    return proc


def _with_sbin() -> None:
    """SLURM's and munge's daemons install into /usr/sbin; a root environment whose
    PATH lacks the sbin folders (``env -i``, some CI runners) would not find them."""
    parts = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    os.environ["PATH"] = os.pathsep.join(parts + [d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin")
                                                  if d not in parts])


_with_sbin()  # before any cluster copies the environment for its daemons


def ensure_installed() -> None:
    """apt-get install the packages when a daemon is missing (apt-get update once if needed)."""
    if all(shutil.which(d) for d in DAEMONS):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=300"]  # another apt-get may hold the lock for a while
    install = ["apt-get", *wait, "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    if _run(install, env=env, check=False).returncode != 0:
        _run(["apt-get", *wait, "update", "-q"], env=env)
        _run(install, env=env)
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing:
        raise ClusterError(f"apt-get installed {PACKAGES} but {missing} is still not on PATH")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_resources() -> Dict[str, int]:
    cpus = len(os.sched_getaffinity(0))
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2 ** 20
    return {"cpus": cpus, "mem_mb": max(256, int(mem_mb * 0.9))}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class LocalSlurm:
    """Start with :meth:`start`, stop with :meth:`stop`; ``env`` has SLURM_CONF."""

    def __init__(self, folder: Path):
        self.dir = Path(folder)
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"
        self.socket = self.dir / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        for sub in ("state", "spool", "log", "munge"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "munge", 0o711)
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        res, d = _node_resources(), self.dir
        self.conf.write_text("\n".join([
            "ClusterName=rbcntest",
            f"SlurmctldHost={self.host}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # a requeued job waits cred_expire seconds before it may start again
            f"AuthInfo=socket={self.socket},cred_expire=10",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobRequeue=1",
            "KillWait=5",
            "MinJobAge=600",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2",
            f"NodeName={self.host} CPUs={res['cpus']} RealMemory={res['mem_mb']} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            ""]))

    def start(self, timeout: float = 90) -> "LocalSlurm":
        ensure_installed()
        self._write_config()
        m = self.dir / "munge"
        _run(["munged", "--force", f"--socket={self.socket}", f"--key-file={m / 'munge.key'}",
              f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'munged.seed'}",
              f"--log-file={self.dir / 'log' / 'munged.log'}"], env=self.env)
        _run(["slurmctld", "-f", str(self.conf)], env=self.env)
        _run(["slurmd", "-f", str(self.conf)], env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = _run(["sinfo", "-h", "-o", "%t"], env=self.env, check=False).stdout.strip()
            if state == "idle":
                return self
            time.sleep(1)
        logs = "\n".join(p.read_text()[-1500:] for p in (self.dir / "log").glob("slurm*.log"))
        self.stop()
        raise ClusterError(f"the SLURM node did not become idle in {timeout:.0f} s; logs:\n{logs}")

    def stop(self) -> None:
        _run(["scancel", "--full", "--user=root"], env=self.env, check=False, timeout=30)
        _run(["scontrol", "shutdown"], env=self.env, check=False, timeout=30)
        for name, wait in (("slurmd.pid", 5.0), ("slurmctld.pid", 5.0), ("munge/munged.pid", 0.0)):
            try:
                pid = int((self.dir / name).read_text().strip())
            except (OSError, ValueError):
                continue
            deadline = time.monotonic() + wait      # scontrol shutdown stops the slurm daemons itself
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)

    def squeue(self, job: str) -> str:
        return _run(["squeue", "-h", "-j", job, "-o", "%i %T %r"], env=self.env, check=False).stdout.strip()

    def scancel_signal(self, job: str, sig: str = "USR2") -> None:
        """What SLURM does ahead of a preemption or a time limit (sbatch --signal)."""
        _run(["scancel", f"--signal={sig}", job], env=self.env)

    def kill_and_requeue(self, job: str) -> None:
        """SIGKILL a running task's processes (a node crash, the OOM killer: no
        handler runs) and put the task back in the queue."""
        _run(["scancel", "--signal=KILL", job], env=self.env)
        _run(["scontrol", "requeue", job], env=self.env)
