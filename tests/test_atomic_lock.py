"""Atomic writes and the per-run lock: unique temp files, orphan clean-up,
one holder per run, takeover of dead or silent holders, and no double win."""
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustbench_convnorm import atomic
from robustbench_convnorm.lock import (LOCK_FILE, LockLost, RunLocked, acquire, lock_is_stale, read_lock,
                                       run_lock)


def test_failed_write_leaves_target_and_no_temp(tmp_path):
    target = tmp_path / "record.json"
    atomic.write_json(target, {"a": 1})

    def boom(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write(target, boom)
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_temp_names_are_unique_per_call(tmp_path):
    names = {atomic.temp_name(tmp_path / "x.csv").name for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith(".x.csv.") and n.endswith(".tmp") for n in names)


def _hammer(path, tag, n):
    for i in range(n):
        atomic.write_text(path, f"{tag}:{i}\n" * 200)


def test_concurrent_writers_never_collide(tmp_path):
    # the fixed temp name of the old write_log made the slower of two writers crash
    target = tmp_path / "train_log.csv"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(target, t, 40)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    lines = set(target.read_text().splitlines())
    assert len(lines) == 1  # one whole file, never a mix
    assert not list(tmp_path.glob("*.tmp"))


def test_orphan_temps_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    orphan = tmp_path / f".checkpoint.pt.{atomic._host()}.{dead}.0123abcd.tmp"
    orphan.write_text("x")
    live = atomic.temp_name(tmp_path / "checkpoint.pt")  # this process: alive
    live.write_text("y")
    other_host = tmp_path / f".checkpoint.pt.elsewhere.{dead}.0123abcd.tmp"
    other_host.write_text("z")
    removed = atomic.remove_orphan_temps(tmp_path)
    assert removed == [orphan]
    assert live.exists() and other_host.exists()


def test_second_worker_is_refused_with_the_holder_named(tmp_path):
    with run_lock(tmp_path, owner="shard 1/2") as lock:
        with pytest.raises(RunLocked) as err:
            acquire(tmp_path)
        assert f"pid {os.getpid()}" in str(err.value) and "shard 1/2" in str(err.value)
        lock.ensure_held()
    assert not (tmp_path / LOCK_FILE).exists()  # released
    with run_lock(tmp_path):
        pass


_HOLD = """
import sys, time
from robustbench_convnorm.lock import acquire
acquire(sys.argv[1], heartbeat=0.05)
print("held", flush=True)
time.sleep(60)
"""


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(RunLocked):
        acquire(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with run_lock(tmp_path) as lock:
        assert "is gone" in lock.took_over


def test_silent_heartbeat_is_taken_over_and_the_old_holder_learns_it(tmp_path):
    old = acquire(tmp_path, heartbeat=3600)
    # pretend it lives on another node that stopped beating 20 minutes ago
    data = json.loads((tmp_path / LOCK_FILE).read_text())
    data.update(host="node-that-died", heartbeat_unix=time.time() - 1200)
    (tmp_path / LOCK_FILE).write_text(json.dumps(data))
    os.utime(tmp_path / LOCK_FILE, (time.time() - 1200,) * 2)
    holder = read_lock(tmp_path)
    assert "heartbeat" in lock_is_stale(holder, stale_after=600)
    new = acquire(tmp_path, stale_after=600)
    try:
        assert "heartbeat" in new.took_over
        with pytest.raises(LockLost):
            old.ensure_held()
        new.ensure_held()
    finally:
        old.release()  # must not remove the new holder's lock
        assert (tmp_path / LOCK_FILE).exists()
        new.release()


def test_heartbeat_keeps_a_slow_run_alive(tmp_path):
    with run_lock(tmp_path, heartbeat=0.05):
        first = (tmp_path / LOCK_FILE).stat().st_mtime
        time.sleep(0.3)
        assert (tmp_path / LOCK_FILE).stat().st_mtime > first
        assert lock_is_stale(read_lock(tmp_path), stale_after=0.2) is None


def _race(run_dir, q, done):
    try:
        lock = acquire(run_dir, stale_after=600)
        q.put(("won", os.getpid()))
        done.wait(60)  # hold it until every racer has tried
        lock.release()
    except RunLocked:
        q.put(("lost", os.getpid()))


def test_many_workers_racing_for_a_stale_lock_one_wins(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    import socket
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead),
                                                  "token": "x", "heartbeat_unix": time.time()}))
    ctx = mp.get_context("spawn")
    q, done = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_race, args=(tmp_path, q, done)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60)[0] for _ in procs]
    done.set()
    for p in procs:
        p.join(60)
    assert results.count("won") == 1, results


def test_a_run_held_by_another_worker_is_skipped_untouched(tmp_path):
    from robustbench_convnorm.config import config_from_dict, expand_grid
    from robustbench_convnorm.run import LOCKED, DataCache, execute_run

    cfg = config_from_dict({"data": {"source": "synthetic", "options": {"n_train": 32, "n_test": 16}},
                            "train": {"epochs": 1, "batch_size": 16, "val_examples": 0},
                            "eval": {"lipschitz": False}, "output_dir": str(tmp_path)})
    spec, = expand_grid(cfg)
    with run_lock(spec.run_dir, owner="the other worker"):
        out = execute_run(spec, __import__("torch").device("cpu"), DataCache(), log=lambda *a: None)
        assert out["status"] == LOCKED and out["holder"]["owner"] == "the other worker"
        assert sorted(p.name for p in spec.run_dir.iterdir()) == [LOCK_FILE]  # nothing written
    out = execute_run(spec, __import__("torch").device("cpu"), DataCache(), log=lambda *a: None)
    assert out["status"] == "finished"
    assert not (spec.run_dir / LOCK_FILE).exists()
