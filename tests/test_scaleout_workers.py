"""Many workers on one output_dir: concurrent shards, plain runs beside
them, the local launcher, and the SLURM launcher's code on submitit's
in-process cluster. Each run is trained exactly once, the records match a
plain run's, and one complete leaderboard is left."""
import json
import os
import signal
import time
from pathlib import Path

import pytest

from robustbench_convnorm import lock, run
from robustbench_convnorm.config import expand_grid, load_config
from robustbench_convnorm.launch import merge

from scaleout_util import (comparable, count_trainings, finish, leaderboard_runs, records, start, trained_runs,
                           write_config)

GRID = {"normalizers": [{"name": "vanilla"}, {"name": "sn"}], "seeds": [0, 1]}


def _assert_complete(out, n_runs, *stdouts):
    recs = records(out)
    assert len(recs) == n_runs and all(r["status"] == "finished" for r in recs.values()), \
        {k: r["status"] for k, r in recs.items()}
    trainings = count_trainings(*stdouts)
    assert set(trainings) == set(recs) and set(trainings.values()) == {1}, trainings  # each trained once
    assert leaderboard_runs(out) == set(recs)                                           # one complete board
    stamp = json.loads((Path(out) / merge.LOCK_DIR / merge.STAMP).read_text())
    assert stamp["fingerprint"] == merge._fingerprint(Path(out))                       # built after the last record
    return recs


def test_two_shards_and_a_plain_run_share_one_output_dir(tmp_path, capsys):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "grid.yaml", out, **GRID)
    workers = [start(cfg, "--shard", "0/2"), start(cfg, "--shard", "1/2")]
    deadline = time.monotonic() + 300
    while not list(out.glob("runs/*/record.json")):           # the shards are at work
        assert time.monotonic() < deadline and all(w.poll() is None for w in workers)
        time.sleep(0.2)
    assert run.main([str(cfg)]) == 0                       # a plain run of the whole grid, meanwhile
    plain = capsys.readouterr().out
    results = [finish(w) for w in workers]
    for code, stdout, stderr in results:
        assert code == 0, stdout[-2000:] + stderr[-2000:]
    recs = _assert_complete(out, 4, plain, *(stdout for _, stdout, _ in results))
    assert all(r["world_size"] == 1 for r in recs.values())
    # a rerun finds every run finished and trains nothing
    assert run.main([str(cfg), "--shard", "0/2"]) == 0
    assert not trained_runs(capsys.readouterr().out)


@pytest.mark.slow
def test_three_shards_and_a_repeated_shard_at_once(tmp_path):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "grid.yaml", out, normalizers=[{"name": "vanilla"}, {"name": "sn"},
                                                                 {"name": "ocnn"}], seeds=[0, 1])
    workers = [start(cfg, "--shard", f"{i}/3") for i in (0, 1, 2, 1)]
    results = [finish(w) for w in workers]
    for code, stdout, stderr in results:
        assert code == 0, stdout[-2000:] + stderr[-2000:]
    _assert_complete(out, 6, *(stdout for _, stdout, _ in results))


def test_local_launcher_two_workers_gives_a_plain_runs_records(tmp_path, capsys):
    plain_out, local_out = tmp_path / "plain", tmp_path / "local"
    grid = {"train.method": ["natural", "free"]}
    plain = write_config(tmp_path / "plain.yaml", plain_out, grid=grid)
    local = write_config(tmp_path / "local.yaml", local_out, grid=grid)
    assert run.main([str(local), "--launcher", "local", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    cores = len(os.sched_getaffinity(0))
    assert f"2 run(s), 2 at a time ({max(1, cores // 2)} CPU thread(s), " in text   # the cores shared
    logs = sorted((local_out / "launcher" / "local").glob("*.log"))
    assert len(logs) == 2
    _assert_complete(local_out, 2, *(p.read_text() for p in logs))
    for worker_log in logs:                    # each worker also kept its run's run.log, with that run alone
        run_id, other = worker_log.stem, next(p.stem for p in logs if p != worker_log)
        kept = (local_out / "runs" / run_id / "run.log").read_text()
        assert f"=== {run_id}: " in kept and "[eval] clean" in kept and other not in kept
    assert run.main([str(plain)]) == 0
    a, b = records(plain_out), records(local_out)
    assert set(a) == set(b)                                                         # same run ids
    for run_id in a:
        assert comparable(a[run_id]) == comparable(b[run_id]), run_id


def test_local_launcher_counts_a_run_held_by_another_worker_apart(tmp_path, capsys):
    """A run whose lock a live worker holds is skipped: the closing line says it is
    held, and does not count it as finished (its outcome is that worker's)."""
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "grid.yaml", out, grid={"train.method": ["natural", "free"]})
    held_spec, free_spec = expand_grid(load_config(cfg))
    held = lock.acquire(held_spec.run_dir)              # this test process is the other, live worker
    try:
        assert run.main([str(cfg), "--launcher", "local", "--workers", "2"]) == 0
    finally:
        held.release()
    text = capsys.readouterr().out
    assert "done: 1 finished, 0 not, 1 held by other workers" in text, text[-1500:]
    recs = records(out)
    assert set(recs) == {free_spec.run_id} and recs[free_spec.run_id]["status"] == "finished"


def test_local_launcher_passes_an_only_that_starts_with_a_dash_and_reads_no_stale_verdict(tmp_path, capsys):
    """``--only=-free-`` reaches each worker as one token (as two, the worker's
    parser took "-free-" for a flag, exited at once, and the launcher read the
    old finished record as its verdict); a worker that exits non-zero and
    leaves an earlier launch's record untouched is reported failed."""
    from robustbench_convnorm.launch import local

    out = tmp_path / "out"
    cfg = write_config(tmp_path / "grid.yaml", out, grid={"train.method": ["natural", "free"]})
    assert run.main([str(cfg), "--launcher", "local", "--workers", "2"]) == 0
    before = {k: r["created"] for k, r in records(out).items()}
    capsys.readouterr()
    assert run.main([str(cfg), "--launcher", "local", "--workers", "2", "--only=-free-", "--force"]) == 0
    text = capsys.readouterr().out
    assert "done: 1 finished, 0 not" in text, text[-1500:]
    after = records(out)
    redone = {k for k in after if after[k]["created"] != before[k]}
    assert len(redone) == 1 and "-free-" in redone.pop()                     # the free run trained again
    spec = next(s for s in expand_grid(load_config(cfg)) if "-natural-" in s.run_id)
    verdict = local._ended(spec, 2, "worker.log", "cpu", started=time.time() + 1)
    assert verdict.startswith("failed: its worker exited with code 2") and "earlier launch" in verdict
    assert local._ended(spec, 0, "worker.log", "cpu", started=time.time() + 1) == "finished"


@pytest.mark.slow
def test_ctrl_c_stops_every_local_worker_cleanly(tmp_path):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "slow.yaml", out, normalizers=[{"name": "vanilla"}, {"name": "sn"}],
                       data={"source": "synthetic", "options": {"n_train": 1500, "n_test": 40, "size": 8,
                                                                "num_classes": 4}},
                       train__epochs=15, train__val_examples=0)
    parent = start(cfg, "--launcher", "local", "--workers", "2")
    deadline = time.monotonic() + 300
    while len(list(out.glob("runs/*/checkpoint.pt"))) < 2:              # both runs are training
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.5)
    parent.send_signal(signal.SIGINT)
    code, stdout, stderr = finish(parent, timeout=300)
    assert code == 130, stdout + stderr
    recs = records(out)
    assert {r["status"] for r in recs.values()} == {"interrupted"}, recs
    for r in recs.values():                                               # checkpoints kept
        assert (out / "runs" / r["run_id"] / "checkpoint.pt").exists()
        assert not (out / "runs" / r["run_id"] / ".lock").exists()
    again = start(cfg, "--launcher", "local", "--workers", "2")
    code, stdout, stderr = finish(again, timeout=600)
    assert code == 0, stdout + stderr
    assert {r["status"] for r in records(out).values()} == {"finished"}
    logs = "".join(p.read_text() for p in (out / "launcher" / "local").glob("*.log"))
    assert logs.count("resuming from epoch") == 2


def test_slurm_launcher_on_submitits_debug_cluster(tmp_path, capsys):
    """The SLURM launcher's whole path (executor, array, task, records, the
    last task's leaderboard) with submitit's in-process cluster."""
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "grid.yaml", out, normalizers=[{"name": "vanilla"}, {"name": "sn"}],
                       launcher={"cluster": "debug", "poll_seconds": 0.01})
    assert run.main([str(cfg), "--launcher", "slurm", "--wait", "--time", "1:00:00", "--sbatch=--qos=high",
                     "--set", "train.epochs=1"]) == 0
    text = capsys.readouterr().out
    assert "submitted 2 run(s) as job array" in text and "done: 2 finished, 0 not" in text
    recs = records(out)
    assert {r["status"] for r in recs.values()} == {"finished"}
    assert all(r["config"]["train"]["epochs"] == 1 for r in recs.values())             # --set reached the task
    assert leaderboard_runs(out) == set(recs)
    (manifest,) = (out / "launcher").glob("job-*.json")
    doc = json.loads(manifest.read_text())
    grid_ids = [s.run_id for s in expand_grid(load_config(cfg, ["train.epochs=1"]))]
    assert [t["run_id"] for t in doc["tasks"]] == grid_ids and set(grid_ids) == set(recs)   # task i runs run i
    assert [t["task"] for t in doc["tasks"]] == [0, 1]
    assert Path(doc["config"]).read_text() == cfg.read_text()                          # the task's snapshot
    assert doc["overrides"] == ["train.epochs=1"]


def test_slurm_launcher_rejects_bad_executor_parameters_in_one_message(tmp_path, capsys):
    cfg = write_config(tmp_path / "grid.yaml", tmp_path / "out")
    assert run.main([str(cfg), "--launcher", "slurm", "--dry-run",
                     "--set", "launcher.executor={slurm_partiton: gpu}"]) == 2
    err = capsys.readouterr().err
    assert "launcher.executor.slurm_partiton: submitit knows no such parameter (did you mean 'slurm_partition'?)" \
        in err and err.count("\n") == 1
    assert run.main([str(cfg), "--launcher", "slurm", "--dry-run", "--partition", "gpu", "--gpus-per-task", "2",
                     "--max-parallel", "3", "--mem-gb", "16"]) == 0
    text = capsys.readouterr().out
    for line in ("slurm_partition: gpu", "gpus_per_node: 2", "slurm_array_parallelism: 1", "mem_gb: 16.0",
                 "timeout_min: 240"):
        assert line in text, text
    assert not (tmp_path / "out" / "runs").exists()
