"""--launcher slurm on a real SLURM (slurmctld + slurmd + munge on localhost,
started by the fixture as root): a grid submitted as one job array finishes
every run once and leaves a complete leaderboard; a preempted task and a
killed-and-requeued task both resume their runs from their checkpoints."""
import json
import os
import time

import pytest
import torch

from robustbench_convnorm.checkpoints import load_checkpoint
from robustbench_convnorm import run

from scaleout_util import count_trainings, finish, leaderboard_runs, records, start, write_config
from slurm_cluster import ClusterError, LocalSlurm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld, slurmd and munged needs root (CI runs as root)")
    try:
        cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    except ClusterError as err:
        pytest.fail(f"could not start a local SLURM: {err}")
    yield cluster
    cluster.stop()


def submit(cluster, cfg, *flags):
    return start(cfg, "--launcher", "slurm", "--cpus-per-task", "1", "--time", "20",
                 "--set", "launcher.poll_seconds=1", *flags, SLURM_CONF=str(cluster.conf))


def task_logs(out):
    return [p.read_text() for p in sorted((out / "launcher" / "slurm").glob("*_log.out"))]


def test_a_grid_as_one_job_array(slurm, tmp_path):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "grid.yaml", out, normalizers=[{"name": "vanilla"}, {"name": "sn"},
                                                                 {"name": "ocnn"}])
    code, stdout, stderr = finish(submit(slurm, cfg, "--wait", "--max-parallel", "2"), timeout=600)
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    assert "submitted 3 run(s) as job array" in stdout and "done: 3 finished, 0 not" in stdout
    recs = records(out)
    assert len(recs) == 3 and {r["status"] for r in recs.values()} == {"finished"}
    trainings = count_trainings(*task_logs(out))
    assert set(trainings) == set(recs) and set(trainings.values()) == {1}            # each trained once
    assert leaderboard_runs(out) == set(recs)
    manifest = json.loads(next((out / "launcher").glob("job-*.json")).read_text())
    assert sorted(t["run_id"] for t in manifest["tasks"]) == sorted(recs)


def test_preempted_and_killed_tasks_resume_from_their_checkpoints(slurm, tmp_path):
    out = tmp_path / "out"
    slow = {"source": "synthetic", "options": {"n_train": 1500, "n_test": 40, "size": 8, "num_classes": 4},
            "augment": {"crop_padding": 1, "flip": True}}
    cfg = write_config(tmp_path / "grid.yaml", out, normalizers=[{"name": "vanilla"}, {"name": "sn"}],
                       data=slow, train__epochs=20, train__val_examples=0)
    submitter = submit(slurm, cfg, "--wait")
    deadline = time.monotonic() + 300
    while not (out / "launcher").glob("job-*.json") or not list((out / "launcher").glob("job-*.json")):
        assert time.monotonic() < deadline and submitter.poll() is None, finish(submitter)
        time.sleep(0.5)
    manifest = json.loads(next((out / "launcher").glob("job-*.json")).read_text())
    tasks = {t["job_id"]: t["run_id"] for t in manifest["tasks"]}
    assert len(tasks) == 2

    def epochs_done(run_id):
        try:
            return load_checkpoint(out / "runs" / run_id / "checkpoint.pt")["epoch"]
        except (OSError, RuntimeError, EOFError):
            return 0

    while not all(epochs_done(r) >= 1 for r in tasks.values()):             # both mid-run
        assert time.monotonic() < deadline and submitter.poll() is None, finish(submitter)
        time.sleep(0.5)
    preempted, killed = sorted(tasks)
    assert all(epochs_done(r) < 20 for r in tasks.values()), "the runs finished before the test interrupted them"
    slurm.scancel_signal(preempted, "USR2")      # SLURM's warning before preemption or the time limit
    slurm.kill_and_requeue(killed)               # killed outright, then back in the queue
    code, stdout, stderr = finish(submitter, timeout=900)
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    recs = records(out)
    assert {r["status"] for r in recs.values()} == {"finished"}
    logs = {job: (out / "launcher" / "slurm" / f"{job}_0_log.out").read_text() for job in tasks}
    assert "requeueing" in logs[preempted]                              # submitit called our checkpoint()
    for job, run_id in tasks.items():
        assert "resuming from epoch" in logs[job], logs[job][-2000:]
        rows = (out / "runs" / run_id / "train_log.csv").read_text().splitlines()
        assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 21))    # each epoch once
    assert leaderboard_runs(out) == set(recs)
    # resumed runs end exactly where an uninterrupted run ends
    straight = tmp_path / "straight"
    for run_id in tasks.values():
        assert run.main([str(cfg), "--run-id", run_id, "--set", f"output_dir={straight}"]) == 0
        a = load_checkpoint(out / "runs" / run_id / "checkpoint.pt")["model"]
        b = load_checkpoint(straight / "runs" / run_id / "checkpoint.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), run_id
