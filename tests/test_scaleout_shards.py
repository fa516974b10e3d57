"""Shards of a grid (--shard, SLURM arrays), --dry-run --json, the launcher
options, and the lock rule that lets a requeued SLURM task resume its run."""
import collections
import json
import os
import socket
import time

import pytest

from robustbench_convnorm import lock, run
from robustbench_convnorm.config import ConfigError, config_from_dict, expand_grid
from robustbench_convnorm.launch import merge
from robustbench_convnorm.launch.options import parse_minutes, resolve
from robustbench_convnorm.launch.shards import assign, estimated_cost, parse_shard, select, shard_from_slurm

from scaleout_util import TINY, write_config
from cli_util import cli

TABLE1 = ["vanilla", "sn", "oni", "ocnn", "convnorm"]


def _record(run_id, status):
    """The smallest record the run command takes for its run's (records.record_problem)."""
    return {"schema": 1, "run_id": run_id, "status": status, "error": None, "metrics": {}, "evaluations": {}}


def grid(normalizers=TABLE1, seeds=(0, 1, 2), **train):
    raw = json.loads(json.dumps(TINY))
    raw["normalizers"] = [n if isinstance(n, dict) else {"name": n} for n in normalizers]
    raw["seeds"] = list(seeds)
    raw["train"].update(train)
    return expand_grid(config_from_dict(raw))


def test_shards_partition_the_grid_and_balance_normalizers():
    specs = grid()                                            # Table 1: 5 normalizers x 3 seeds
    for n in (1, 2, 3, 4, 7, 15, 16):
        parts = [select(specs, parse_shard(f"{i}/{n}")) for i in range(n)]
        ids = [s.run_id for part in parts for s in part]
        assert sorted(ids) == sorted(s.run_id for s in specs)          # every run exactly once
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1, (n, sizes)
    three = [select(specs, parse_shard(f"{i}/3")) for i in range(3)]
    for part in three:                                         # each part: one run of every normalizer
        assert sorted(s.normalizer.name for s in part) == sorted(TABLE1)


def test_every_worker_process_computes_the_same_parts(tmp_path):
    """Workers are separate processes (with their own string-hash seeds): each must
    assign every run to the same part, or runs would be done twice or never."""
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "out", seeds=[0, 1, 2],
                       normalizers=[{"name": n} for n in TABLE1])
    parts = []
    for hash_seed in (1, 2):
        done = cli(cfg, "--dry-run", "--json", "--shard", "0/4", PYTHONHASHSEED=hash_seed, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        parts.append({r["run_id"]: r["shard"] for r in json.loads(done.stdout)["runs"]})
    assert len(parts[0]) == 15 and parts[0] == parts[1]
    assert sorted(collections.Counter(parts[0].values()).values()) == [3, 4, 4, 4]


def test_shards_balance_estimated_work_not_only_counts():
    # one normalizer trains 4x longer: it should not share a part with much else
    specs = grid(normalizers=[{"name": "vanilla", "overrides": {"train.epochs": 8}}, "sn", "ocnn"], seeds=(0, 1))
    costs = [estimated_cost(s) for s in specs]
    parts = assign(specs, 2)
    loads = [sum(c for c, p in zip(costs, parts) if p == k) for k in range(2)]
    assert max(loads) - min(loads) <= max(costs)               # LPT's guarantee
    assert abs(loads[0] - loads[1]) < sum(costs) / 2           # far from a count-only split ([18,4])


@pytest.mark.parametrize("text, message", [
    ("2/2", "did you mean --shard 1/2"), ("1", "expected I/N"), ("a/b", "expected I/N"), ("0/0", "at least 1")])
def test_bad_shard_is_one_clear_message(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_shard(text)


def test_slurm_array_variables_pick_the_part():
    base = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "3", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert shard_from_slurm({}) is None
    s = shard_from_slurm({**base, "SLURM_ARRAY_TASK_ID": "2"})
    assert (s.index, s.count, s.source) == (2, 4, "SLURM array")
    one_based = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "4"}
    assert (shard_from_slurm(one_based).index, shard_from_slurm(one_based).count) == (3, 4)
    stepped = {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "9",
               "SLURM_ARRAY_TASK_STEP": "3", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert (shard_from_slurm(stepped).index, shard_from_slurm(stepped).count) == (2, 4)
    with pytest.raises(ConfigError, match="not evenly spaced"):   # --array=1,3,7
        shard_from_slurm({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "7",
                          "SLURM_ARRAY_TASK_COUNT": "3"})


def test_dry_run_json_and_slurm_selection(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", out, seeds=[0, 1, 2], normalizers=[{"name": "vanilla"}, {"name": "sn"}])
    specs = expand_grid(config_from_dict(json.loads(json.dumps({**TINY, "seeds": [0, 1, 2], "output_dir": str(out),
                                                                 "normalizers": [{"name": "vanilla"},
                                                                                 {"name": "sn"}]}))))
    done = specs[4]
    done.run_dir.mkdir(parents=True)
    (done.run_dir / "record.json").write_text(json.dumps(_record(done.run_id, "finished")))
    assert run.main([str(cfg), "--dry-run", "--json", "--shard", "1/3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["shard"] == {"index": 1, "count": 3, "source": "--shard"}
    assert [r["run_id"] for r in doc["runs"]] == [s.run_id for s in specs]       # the whole grid, in order
    assert [r["shard"] for r in doc["runs"]] == assign(specs, 3)
    assert [r["selected"] for r in doc["runs"]] == [p == 1 for p in assign(specs, 3)]
    by_id = {r["run_id"]: r for r in doc["runs"]}
    assert by_id[done.run_id]["status"] == "finished" and by_id[specs[0].run_id]["status"] is None
    assert by_id[specs[0].run_id]["settings"]["train"]["epochs"] == 2 and "eval" not in by_id[specs[0].run_id]["settings"]
    assert not (out / "runs" / specs[0].run_id).exists()                          # nothing written
    # a SLURM array task with no --shard runs its part
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "2")
    assert run.main([str(cfg), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "shard 2/3 (SLURM array): 2 of 6 run(s)" in text
    assert all((s.run_id in text) == (p == 2) for s, p in zip(specs, assign(specs, 3)))


def test_selection_errors_name_the_fix(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "out")
    assert run.main([str(cfg), "--run-id", "nope"]) == 2
    assert "--run-id nope: no such run" in capsys.readouterr().err
    assert run.main([str(cfg), "--workers", "2"]) == 2
    assert "--workers only mean something with a launcher" in capsys.readouterr().err
    assert run.main([str(cfg), "--json"]) == 2
    assert "use it with --dry-run" in capsys.readouterr().err
    assert run.main([str(cfg), "--set", "launcher.partiton=gpu", "--dry-run"]) == 2
    assert "launcher.partiton: unknown key (did you mean 'partition'?)" in capsys.readouterr().err
    assert run.main([str(cfg), "--launcher", "local", "--gpus", "0,1", "--dry-run"]) == 2
    assert "--gpus with device cpu" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_launcher_section_flags_over_config():
    class Args:
        launcher_time = "1-02:30"
        launcher_sbatch = ["#SBATCH --qos=high"]
        launcher_partition = None

    opts = resolve({"partition": "gpu", "time": 30, "sbatch": ["--exclusive"], "gpus": [0, 0, 1]}, Args())
    assert (opts.partition, opts.time, opts.gpus) == ("gpu", 26 * 60 + 30, [0, 0, 1])
    assert opts.sbatch == ["--exclusive", "--qos=high"]
    assert [parse_minutes(v) for v in (90, "90", "1:30:00", "2-0", "0:90")] == [90, 90, 90, 2880, 2]
    with pytest.raises(ConfigError, match="not a time limit"):
        parse_minutes("soon")


def test_a_requeued_slurm_task_takes_over_its_own_earlier_lock(tmp_path, monkeypatch):
    """After a requeue the task may land on another node: its old lock (other
    host, fresh heartbeat) must not make it skip its own run."""
    held = {"host": "node-17", "pid": 4242, "job_id": "77_3", "job_restart": 0, "token": "t",
            "_heartbeat_age": 5.0}
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert lock.lock_is_stale(held) is None               # same incarnation: a live sibling process
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert "requeued" in lock.lock_is_stale(held)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")          # another task of the array: live, keep out
    assert lock.lock_is_stale(held) is None
    # end to end: the requeued task acquires the run its earlier incarnation held
    run_dir = tmp_path / "run"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    first = lock.acquire(run_dir)
    first._stop.set()                                        # its node died: no release, no heartbeat
    text = json.loads((run_dir / lock.LOCK_FILE).read_text())
    text["host"] = "node-17"
    (run_dir / lock.LOCK_FILE).write_text(json.dumps(text))
    with pytest.raises(lock.RunLocked):
        lock.acquire(run_dir)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    second = lock.acquire(run_dir)
    assert "requeued" in second.took_over and second.held()
    second.release()
    assert socket.gethostname() != "node-17"


def test_leaderboard_is_built_once_per_set_of_records(tmp_path):
    specs = grid(normalizers=["vanilla", "sn"], seeds=(0,))
    out = tmp_path / "out"
    for s in specs:
        s.config.output_dir = str(out)
    builds = []

    def build(output_dir):
        builds.append(1)
        (output_dir / "board.md").write_text("x")
        return {"md": str(output_dir / "board.md")}

    (out / "runs" / specs[0].run_id).mkdir(parents=True)
    (out / "runs" / specs[0].run_id / "record.json").write_text(json.dumps(_record(specs[0].run_id, "finished")))
    assert merge.build_if_complete(specs, out, build=build) is None and not builds   # one run still to go
    (out / "runs" / specs[1].run_id).mkdir(parents=True)
    (out / "runs" / specs[1].run_id / "record.json").write_text(json.dumps(_record(specs[1].run_id, "running")))
    assert merge.build_if_complete(specs, out, build=build) is None                  # running is not done
    (out / "runs" / specs[1].run_id / "record.json").write_text(json.dumps(_record(specs[1].run_id, "failed")))
    assert merge.build_if_complete(specs, out, build=build) and len(builds) == 1     # failed is terminal
    assert merge.build_if_complete(specs, out, build=build) and len(builds) == 1     # same records: no rebuild
    (out / "board.md").unlink()
    assert merge.build_if_complete(specs, out, build=build) and len(builds) == 2     # its output went missing
    lock_dir = out / merge.LOCK_DIR
    held = lock.acquire(lock_dir, owner="another builder")
    messages = []
    assert merge.build_once(out, build=build, wait_seconds=0.3, warn=messages.append) is None
    assert "being worked on" in messages[-1] and len(builds) == 2                    # never two builds at once
    held.release()


def test_a_run_failed_by_another_worker_meanwhile_is_not_retried(tmp_path, capsys):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", out)
    (spec,) = expand_grid(config_from_dict({**json.loads(json.dumps(TINY)), "output_dir": str(out)}))
    spec.run_dir.mkdir(parents=True)
    record = spec.run_dir / "record.json"
    record.write_text(json.dumps({"run_id": spec.run_id, "status": "failed"}))
    assert merge.failed_since(spec, 0.0)["status"] == "failed"
    assert merge.failed_since(spec, time.time() + 60) is None            # failed before that worker began
    soon = time.time() + 3600                                             # recorded after this worker began
    os.utime(record, (soon, soon))
    assert run.main([str(cfg), "--shard", "0/1"]) == 1
    assert "another worker recorded it failed while this one ran" in capsys.readouterr().out
    assert json.loads(record.read_text())["status"] == "failed"           # not trained again
    os.utime(record, (1.0, 1.0))                                          # a failure of an earlier launch
    assert run.main([str(cfg), "--shard", "0/1"]) == 0                     # is retried, as reruns always did
    assert json.loads(record.read_text())["status"] == "finished"
