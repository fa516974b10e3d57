"""--launcher slurm: the grid as one submitit job array, one run per task.

    python -m robustbench_convnorm.run configs/pgd.yaml --launcher slurm \\
        --partition gpu --time 4:00:00 --gpus-per-task 1 --cpus-per-task 8 --max-parallel 8

Each task receives the config (a snapshot taken at submission, under
``<output_dir>/launcher/``), the --set overrides and one run id, and runs the
ordinary command on that run (launch/worker.py). submitit's logs go to
``<output_dir>/launcher/slurm/``. The submitter prints the job id and returns;
with --wait it blocks, reports each run, and exits 1 if one failed.

Preemption and time-outs: SLURM signals the task ahead of time, submitit
calls :meth:`RunTask.checkpoint`, which resubmits the same task; the
requeued task trains its run again, which resumes from the run's last
checkpoint (the lock's holder, this job's earlier incarnation, is taken over).
A run that fails is recorded failed; the other tasks go on. The task that
finishes the grid's last run builds the leaderboard.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

try:
    import submitit
    from submitit.helpers import Checkpointable
except ImportError as err:  # launch/__init__.py turns this into one message
    raise ImportError("--launcher slurm needs submitit: pip install submitit") from err

from .. import atomic
from ..config import ConfigError, RunSpec
from ..records import LOCKED, read_record
from ..registry import closest
from . import merge
from .options import LauncherOptions
from .worker import code_root, done_line, mark_lost, passed_flags, verdict_predates, worker_argv

__all__ = ["RunTask", "make_executor", "executor_parameters", "gpus_per_task", "slurm_available", "submit",
           "wait_and_report"]


class RunTask(Checkpointable):
    """One array task: the ordinary command on one run. Holds strings only
    (what submitit pickles): the config path, the overrides, the flags each
    worker repeats and the submitter's working directory."""

    def __init__(self, config: str, overrides: Sequence[str], flags: Sequence[str], cwd: str):
        self.config, self.overrides, self.flags, self.cwd = str(config), list(overrides), list(flags), str(cwd)

    def __call__(self, run_id: str) -> Dict[str, Any]:
        os.chdir(self.cwd)  # relative paths in the config mean what they meant to the submitter
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # launcher.tasks_per_node: this run is data-parallel over the tasks
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        from .. import run

        code = run.main(worker_argv(self.config, self.overrides, run_id, self.flags))
        return {"run_id": run_id, "exit_code": code, "rank": env.global_rank}

    def checkpoint(self, run_id: str):
        # the run checkpoints itself every epoch: requeueing the same task resumes it
        print(f"preempted or timed out: requeueing {run_id}; it resumes from its last checkpoint", flush=True)
        return super().checkpoint(run_id)


def _time_default(opts: LauncherOptions) -> int:
    return opts.time if opts.time is not None else 240


def slurm_available() -> bool:
    """Whether this machine can submit to SLURM (submitit looks for srun)."""
    return submitit.SlurmExecutor.affinity() > 0


def _cluster_has_gpus(partition: Optional[str]) -> Optional[bool]:
    """Whether the partition (or, without one, any partition) offers GPUs,
    from sinfo's generic resources; None when sinfo cannot tell."""
    if shutil.which("sinfo") is None:
        return None
    cmd = ["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return "gpu" in proc.stdout.lower()


def gpus_per_task(opts: LauncherOptions, cfg) -> Tuple[int, str]:
    """The GPUs each task asks for, and how that was decided (for messages).
    ``device: auto`` follows the cluster, not the submitting host: 1 where
    sinfo lists GPUs on the partition, 0 where it lists none."""
    if opts.gpus_per_task is not None:
        return opts.gpus_per_task, "--gpus-per-task"
    if cfg.device == "cpu":
        return 0, "device: cpu"
    if cfg.device == "cuda":
        return 1, "device: cuda"
    has = _cluster_has_gpus(opts.partition)
    if has is None:
        return 1, ("device: auto, and sinfo could not say whether the partition has GPUs; on a CPU-only "
                   "partition set --gpus-per-task 0 (or device: cpu)")
    where = f"partition {opts.partition}" if opts.partition else "the cluster"
    return (1, f"device: auto, and sinfo lists GPUs on {where}") if has else \
        (0, f"device: auto, and sinfo lists no GPU on {where}")


def executor_parameters(opts: LauncherOptions, cfg, n_tasks: int, gpus: Optional[int] = None) -> Dict[str, Any]:
    """submitit's parameters for these options (names submitit validates)."""
    if gpus is None:
        gpus = gpus_per_task(opts, cfg)[0]
    setup = []
    root = code_root()
    if root:  # the tasks import this checkout's code, whatever their working directory
        setup.append(f"export PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}")
    setup.append("export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}")
    setup += list(opts.setup)
    extra = {}
    for line in opts.sbatch:
        key, _, value = line.lstrip("-").partition("=")
        extra[key] = value if value else True
    params: Dict[str, Any] = {
        "name": opts.job_name or f"rbcn-{cfg.name or 'grid'}",
        "timeout_min": _time_default(opts),
        "tasks_per_node": opts.tasks_per_node,
        "nodes": 1,
        "gpus_per_node": gpus or None,
        "cpus_per_task": opts.cpus_per_task,
        "mem_gb": opts.mem_gb,
        "slurm_partition": opts.partition,
        "slurm_account": opts.account,
        "slurm_array_parallelism": min(opts.max_parallel or n_tasks, max(n_tasks, 1)),
        "slurm_setup": setup,
        "slurm_additional_parameters": extra or None,
    }
    passed = dict(opts.executor)
    if passed.get("slurm_setup"):  # after ours: the tasks still import this code
        params["slurm_setup"] = setup + list(passed.pop("slurm_setup"))
    params.update(passed)
    return {k: v for k, v in params.items() if v is not None}


class _CheckOnlySlurmExecutor(submitit.SlurmExecutor):
    """submitit's SLURM executor where SLURM is not installed, for --dry-run:
    it checks parameters as the real one does and never submits."""

    @classmethod
    def affinity(cls) -> int:
        return 1

    def _internal_process_submissions(self, delayed_submissions):
        raise RuntimeError("a check-only executor never submits")


def _auto_executor(folder: Path, opts: LauncherOptions, check_only: bool):
    kwargs = {"python": opts.python} if opts.python and opts.cluster == "slurm" else {}
    if not (check_only and opts.cluster == "slurm"):
        return submitit.AutoExecutor(folder=folder, cluster=opts.cluster,
                                     **{f"slurm_{k}": v for k, v in kwargs.items()})
    # submitit's AutoExecutor translates the generic names (mem_gb, timeout_min,
    # slurm_*) for its inner executor; give it the check-only one
    executor = submitit.AutoExecutor(folder=folder, cluster="debug")
    executor.cluster, executor._executor = "slurm", _CheckOnlySlurmExecutor(folder, **kwargs)
    return executor


def make_executor(folder: Path, opts: LauncherOptions, cfg, n_tasks: int, *, check_only: bool = False,
                  gpus: Optional[int] = None):
    """submitit's AutoExecutor with our parameters; a misspelled or invalid
    one becomes one ConfigError naming it. ``check_only`` (--dry-run) needs
    no SLURM on this machine."""
    if opts.cluster == "slurm" and not check_only and not slurm_available():
        raise ConfigError("--launcher slurm: this machine has no SLURM (srun is not on PATH); submit from a "
                          "SLURM login node, check the submission here with --dry-run, or run on this machine "
                          "with --launcher local")
    executor = _auto_executor(folder, opts, check_only)
    params = executor_parameters(opts, cfg, n_tasks, gpus)
    try:
        executor.update_parameters(**params)
    except (NameError, ValueError, TypeError, AssertionError) as err:
        raise ConfigError(_reword(err, params, executor)) from None
    return executor


def _reword(err: Exception, params: Dict[str, Any], executor) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
    valid = sorted(executor._valid_parameters()) + sorted(
        f"slurm_{p}" for p in submitit.SlurmExecutor._valid_parameters())
    bad = [k for k in params if k not in valid]
    if bad:
        return (f"launcher.executor.{bad[0]}: submitit knows no such parameter{closest(bad[0], valid)}; "
                f"write submitit's names there (e.g. slurm_qos, slurm_constraint, slurm_exclude)")
    return f"launcher: submitit refused these settings: {first}"


def _snapshot(config: str, folder: Path) -> Path:
    """A copy of the config that later edits do not reach (queued tasks read it)."""
    text = Path(config).read_bytes()
    path = folder / f"config-{hashlib.sha256(text).hexdigest()[:10]}{Path(config).suffix or '.yaml'}"
    if not path.exists():
        atomic.write_bytes(path, text)
    return path


def submit(cfg, specs: Sequence[RunSpec], grid: Sequence[RunSpec], opts: LauncherOptions, *, args,
           device) -> int:
    """Submit ``specs`` as one job array; with --wait, report and return 1 if a run failed."""
    if not specs:
        print("nothing to submit: the selection is empty")
        return 0
    root = Path(cfg.output_dir).resolve() / "launcher"
    folder = root / "slurm"
    gpus, why = gpus_per_task(opts, cfg)
    executor = make_executor(folder, opts, cfg, len(specs), check_only=args.dry_run, gpus=gpus)
    if args.dry_run:
        params = executor_parameters(opts, cfg, len(specs), gpus)
        print(f"--launcher slurm would submit {len(specs)} task(s) (one run each), logs in {folder}, with:")
        for key in sorted(params):
            print(f"  {key}: {params[key]}")
        print(f"  ({gpus} GPU(s) per task: {why})")
        return 0
    config = str(_snapshot(args.config, root))
    task = RunTask(config, args.overrides, passed_flags(args), os.getcwd())
    submitted = time.time()
    try:
        jobs = executor.map_array(task, [s.run_id for s in specs])
    except Exception as err:  # sbatch refused (partition, account, limits): its own words
        lines = str(err).strip().splitlines() or [err.__class__.__name__]
        hint = f" (each task asked for {gpus} GPU(s): {why})" if gpus else ""
        raise ConfigError(f"sbatch refused the job array: {lines[-1]}{hint}") from None
    array_id = str(jobs[0].job_id).split("_")[0]
    manifest = {"job_id": array_id, "config": config, "submitted_config": str(Path(args.config).resolve()),
                "overrides": list(args.overrides), "cwd": os.getcwd(), "log_folder": str(folder),
                "tasks": [{"task": i, "job_id": str(j.job_id), "run_id": s.run_id}
                          for i, (j, s) in enumerate(zip(jobs, specs))]}
    atomic.write_json(root / f"job-{array_id}.json", manifest)
    print(f"submitted {len(specs)} run(s) as job array {array_id} "
          f"({executor.parameters.get('array_parallelism', len(specs))} at a time at most)")
    print(f"  logs:  {folder}/{array_id}_<task>_0_log.out and .err")
    print(f"  tasks: {root / f'job-{array_id}.json'} (task -> run id)")
    print(f"  the task that finishes the last run builds the leaderboard; any time: "
          f"python -m robustbench_convnorm.leaderboard {cfg.output_dir}")
    if not opts.wait:
        print(f"  watch: squeue -j {array_id}")
        return 0
    return wait_and_report(jobs, specs, grid, cfg, opts, str(device), submitted=submitted)


def _squeue_lists(job_id: str) -> bool:
    """Whether SLURM still has the task pending, running or requeued."""
    try:
        proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.SubprocessError):
        return True  # cannot tell: keep waiting
    return proc.returncode == 0 and bool(proc.stdout.strip())


class _Watch:
    """When a task has ended: its result file, else (SLURM) its absence from
    squeue twice in a row. Works where sacct (what submitit asks) is off."""

    def __init__(self, job, cluster: str):
        self.job, self.cluster, self.gone = job, cluster, 0

    def done(self) -> bool:
        if self.cluster != "slurm":
            return self.job.done()
        if self.job.paths.result_pickle.exists():
            return True
        self.gone = 0 if _squeue_lists(str(self.job.job_id)) else self.gone + 1
        return self.gone >= 2 or self.job.paths.result_pickle.exists()


def wait_and_report(jobs, specs: Sequence[RunSpec], grid: Sequence[RunSpec], cfg, opts: LauncherOptions,
                    device: str, submitted: Optional[float] = None) -> int:
    submitted = time.time() if submitted is None else submitted
    pending = {i: (_Watch(job, opts.cluster), spec) for i, (job, spec) in enumerate(zip(jobs, specs))}
    statuses: Dict[str, str] = {}
    while pending:
        for i, (watch, spec) in list(pending.items()):
            if not watch.done():
                continue
            del pending[i]
            status = (read_record(spec.run_dir) or {}).get("status")
            if status not in ("finished", "failed"):  # the task ended without a verdict on its run
                why = _task_error(watch.job)
                if why is None:
                    status = LOCKED  # it skipped the run: another live worker holds it
                else:
                    reason = f"task {watch.job.job_id} ended without finishing its run ({why}); " \
                             f"see {watch.job.paths.stderr}"
                    status = "failed" if mark_lost(spec, device, reason) else f"lost: {reason}"
            elif verdict_predates(spec, submitted):  # an earlier launch's verdict: did this task fail first?
                why = _task_error(watch.job)
                if why is not None:
                    status = (f"failed: task {watch.job.job_id} ended with an error ({why}) and left the "
                              f"{status} record of an earlier launch as it was; see {watch.job.paths.stderr}")
            statuses[spec.run_id] = status
            print(f"[{len(statuses)}/{len(specs)}] {spec.run_id}: {status}", flush=True)
        if pending:
            time.sleep(opts.poll_seconds)
    merge.build_if_complete(grid, cfg.output_dir)
    line, failed = done_line(dict(sorted(statuses.items())))
    print(line)
    return 1 if failed else 0


def _task_error(job) -> Optional[str]:
    """Why a task ended badly, or None if it ended well (exit status 0)."""
    if not job.paths.result_pickle.exists():
        return "killed: no result"
    try:
        results = job.results()
    except Exception as err:  # the task raised outside the run (the run's own failures are recorded)
        text = str(err).strip().splitlines()
        return text[-1] if text else err.__class__.__name__
    codes = [r.get("exit_code") for r in results if isinstance(r, dict)]
    return None if all(c == 0 for c in codes) else f"exit status {codes}"
