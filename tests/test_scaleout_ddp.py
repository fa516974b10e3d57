"""Data-parallel runs: torchrun --nproc_per_node=2 on the CPU with Gloo.

With the global batch split over the ranks (an uneven last batch included)
and no BatchNorm, DDP must train the same weights as one process with the
same batch; free AT's perturbations stay in the eps-ball and match too; rank 0
alone writes; a killed DDP run resumes."""
import subprocess
import sys

import pytest
import torch

from robustbench_convnorm import run
from robustbench_convnorm.checkpoints import load_checkpoint
from robustbench_convnorm.training.loop import KILL_AFTER_EPOCH_ENV

from scaleout_util import ROOT, TINY, env, records, write_config

EPS = 8 / 255


def torchrun(*args, nproc=2, **extra_env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "robustbench_convnorm.run", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env(**extra_env), capture_output=True, text=True, timeout=900)


def checkpoints(out):
    return {p.parent.name: load_checkpoint(p) for p in sorted(out.glob("runs/*/checkpoint.pt"))}


def base_ids(by_run_id):
    """A data-parallel run's values under the one-process run's id (its own id drops the -dp2)."""
    return {k[:-len("-dp2")] if k.endswith("-dp2") else k: v for k, v in by_run_id.items()}


def max_weight_diff(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def test_ddp_trains_the_single_process_weights_and_rank0_alone_writes(tmp_path):
    ddp_out, one_out = tmp_path / "ddp", tmp_path / "one"
    grid = {"train.method": ["natural", "free", "fgsm_rs"]}
    ddp_cfg = write_config(tmp_path / "ddp.yaml", ddp_out, grid=grid)
    one_cfg = write_config(tmp_path / "one.yaml", one_out, grid=grid)
    proc = torchrun(ddp_cfg)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 run(s) on cpu x 2 ranks (gloo)" in proc.stdout
    assert proc.stdout.count("[1/3]") == 1                  # rank 1's output is silenced
    assert run.main([str(one_cfg)]) == 0
    ddp_recs, one_recs = base_ids(records(ddp_out)), records(one_out)
    assert set(ddp_recs) == set(one_recs) and len(ddp_recs) == 3
    ddp_ck, one_ck = base_ids(checkpoints(ddp_out)), checkpoints(one_out)
    for run_id, rec in ddp_recs.items():
        # its own run id, folder and leaderboard row: rounding differs from one process (docs/scaling.md)
        assert rec["run_id"] == run_id + "-dp2" and rec["config"]["data_parallel"] == {"world_size": 2}
        assert "data_parallel" not in one_recs[run_id]["config"]
        assert rec["status"] == "finished" and rec["world_size"] == 2
        assert rec["distributed"] == {"backend": "gloo", "sync_batchnorm": False}
        assert one_recs[run_id]["world_size"] == 1
        diff = max_weight_diff(ddp_ck[run_id]["model"], one_ck[run_id]["model"])
        assert diff < 1e-5, (run_id, diff)
        assert rec["metrics"] == one_recs[run_id]["metrics"]
        assert (ddp_out / "runs" / rec["run_id"] / "per_example.csv").read_text() == \
            (one_out / "runs" / run_id / "per_example.csv").read_text()
        log = (ddp_out / "runs" / rec["run_id"] / "train_log.csv").read_text().splitlines()
        assert len(log) == 1 + 2                              # one writer: header and two epochs
        run_log = (ddp_out / "runs" / rec["run_id"] / "run.log").read_text()
        assert run_log.count("=== ") == 1 and run_log.count("epoch 2/2: loss") == 1   # rank 0's alone
        run_dir = ddp_out / "runs" / rec["run_id"]
        assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []   # no temp, no lock
    (free_id,) = [r for r in ddp_recs if "-free-" in r]
    delta = ddp_ck[free_id]["method"]["delta"]
    assert delta.abs().max() <= EPS + 1e-7 and delta.abs().max() > EPS / 2   # used, and inside the ball
    assert torch.allclose(delta, one_ck[free_id]["method"]["delta"], atol=1e-6)


@pytest.mark.slow
def test_normalizers_with_state_stay_correct_under_ddp(tmp_path):
    """ConvNorm's running filter and step counter, Cayley's cached Q in
    evaluation, OCNN's and TN's penalties: DDP equals one process."""
    normalizers = [{"name": "convnorm"}, {"name": "cayley"}, {"name": "ocnn"}, {"name": "tn"}]
    ddp_out, one_out = tmp_path / "ddp", tmp_path / "one"
    ddp_cfg = write_config(tmp_path / "ddp.yaml", ddp_out, normalizers=normalizers)
    one_cfg = write_config(tmp_path / "one.yaml", one_out, normalizers=normalizers)
    proc = torchrun(ddp_cfg)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert run.main([str(one_cfg)]) == 0
    ddp_ck, one_ck = base_ids(checkpoints(ddp_out)), checkpoints(one_out)
    ddp_recs, one_recs = base_ids(records(ddp_out)), records(one_out)
    assert len(ddp_ck) == 4
    for run_id in ddp_ck:
        a, b = ddp_ck[run_id]["model"], one_ck[run_id]["model"]
        assert max_weight_diff(a, b) < 1e-5, run_id
        for key in a:
            if key.endswith("num_steps"):                      # ConvNorm: one count per training forward
                assert a[key].item() == b[key].item() > 0, key
            if key.endswith("running_filter"):
                assert a[key].shape == b[key].shape and a[key].numel() > 0
                assert torch.allclose(a[key], b[key], atol=1e-5), key
        assert ddp_recs[run_id]["metrics"] == one_recs[run_id]["metrics"], run_id
        assert (ddp_out / "runs" / (run_id + "-dp2") / "per_example.csv").read_text() == \
            (one_out / "runs" / run_id / "per_example.csv").read_text()


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_to_the_uninterrupted_weights(tmp_path):
    ddp_out, one_out = tmp_path / "ddp", tmp_path / "one"
    cfg = write_config(tmp_path / "ddp.yaml", ddp_out, train__method="free", train__epochs=3,
                       normalizers=[{"name": "vanilla", "overrides": {"batchnorm": True}}])
    one_cfg = write_config(tmp_path / "one.yaml", one_out, train__method="free", train__epochs=3,
                           normalizers=[{"name": "vanilla", "overrides": {"batchnorm": True}}])
    killed = torchrun(cfg, **{KILL_AFTER_EPOCH_ENV: "1"})
    assert killed.returncode != 0
    (rec,) = records(ddp_out).values()
    assert rec["status"] == "running"
    (ck,) = checkpoints(ddp_out).values()
    assert ck["epoch"] == 1
    resumed = torchrun(cfg)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from epoch 1/3" in resumed.stdout
    (rec,) = records(ddp_out).values()
    assert rec["status"] == "finished" and rec["world_size"] == 2
    straight = torchrun(cfg, "--set", f"output_dir={tmp_path / 'straight'}")
    assert straight.returncode == 0
    (a,), (b,) = checkpoints(ddp_out).values(), checkpoints(tmp_path / "straight").values()
    for key in a["model"]:                                   # BatchNorm per rank, yet resume is exact
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["method"]["delta"], b["method"]["delta"])
    assert run.main([str(one_cfg)]) == 0                      # with BatchNorm DDP differs from one process
    (c,) = checkpoints(one_out).values()
    assert max_weight_diff(a["model"], c["model"]) > 1e-6


def test_sync_batchnorm_on_the_cpu_is_one_clear_error(tmp_path, capsys, monkeypatch):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "out", batchnorm=True)
    monkeypatch.setenv("WORLD_SIZE", "2")                    # as torchrun starts rank 0
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert run.main([str(cfg), "--sync-batchnorm"]) == 2
    assert "SyncBatchNorm runs on CUDA only" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("runs/*"))                       # no run started
    assert run.main([str(cfg), "--launcher", "local", "--dry-run"]) == 2     # launchers start their own ranks
    assert "--launcher under torchrun" in capsys.readouterr().err


def test_batch_split_and_evaluation_hooks_in_one_process(monkeypatch):
    from robustbench_convnorm import distributed

    for n in range(1, 40):
        for world in (2, 3, 4):
            bounds = [distributed.split_bounds(n, world, r) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))              # contiguous, in order
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1 and (min(sizes) >= 1) == (n >= world)
            shards = [distributed.BatchShard(lo, hi, n, world, r) for r, (lo, hi) in enumerate(bounds)]
            assert abs(sum(s.weight for s in shards) / world - 1) < 1e-12          # the average is the mean
            # a last batch smaller than the world size is trained, not skipped: a rank without an
            # example runs a stand-in at weight 0 (it must join the gradient averaging)
            assert [s.empty for s in shards] == [r >= n for r in range(world)]
            assert all(s.weight == 0 for s in shards if s.empty)

    def evaluate_with_shards(model, x, y, cfg, *, device, log, shard=None, gather=None):
        pass

    def evaluate_plain(model, x, y, cfg, *, device, log):
        pass

    assert distributed.evaluate_kwargs(evaluate_with_shards) == {}                  # a plain process
    monkeypatch.setattr(distributed, "_CTX", distributed.Context(1, 2, 1, "gloo", torch.device("cpu")))
    kw = distributed.evaluate_kwargs(evaluate_with_shards)
    assert kw["shard"] == (1, 2) and kw["gather"] is distributed.all_gather_object
    assert distributed.evaluate_kwargs(evaluate_plain) == {}                        # every rank evaluates all
    assert distributed.record_fields() == {"world_size": 2, "distributed": {"backend": "gloo",
                                                                            "sync_batchnorm": False}}


@pytest.mark.slow
def test_every_method_augmentation_and_batch_split_trains_the_one_process_run_step_by_step(tmp_path):
    """natural, free, fgsm_rs x no augmentation, crop, flip, crop+flip x a batch that divides
    the data, an even odd-sized last batch, an unevenly split one and a last batch of one
    example, fewer than the ranks (tests/ddp_lockstep.py):
    after every minibatch each rank's slice is the one-process batch's rows bitwise (order,
    crop and flip draws), free AT's whole perturbation is the one-process one exactly, no
    minibatch is skipped, and the weights differ only by rounding (a wrong split, weight or
    draw moves them by about lr x gradient, 1e-3 here). Rounding is all that remains, and
    it is why a data-parallel run has its own run id (docs/scaling.md)."""
    out = tmp_path / "lockstep.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_lockstep.py"), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    import ddp_lockstep

    got = json.loads(out.read_text())
    assert got["world_size"] == 2
    results = got["results"]
    assert len(results) == len(ddp_lockstep.METHOD_NAMES) * len(ddp_lockstep.AUGMENTS) * len(ddp_lockstep.SPLITS)
    for combo, r in results.items():
        batch = ddp_lockstep.SPLITS[combo.split("/")[2]]
        assert r["steps"] == ddp_lockstep.EPOCHS * -(-ddp_lockstep.N_TRAIN // batch), combo
        assert r["data_equal"], combo
        assert max(r["weight_diff"]) < 1e-6, (combo, max(r["weight_diff"]))
        if combo.startswith("free/"):
            assert max(r["delta_diff"]) == 0.0, combo


def test_a_data_parallel_run_is_named_apart_before_any_process_group_exists():
    """torchrun's WORLD_SIZE, or a SLURM launch with launcher.tasks_per_node, gives every run of
    the grid its -dpN id before training, so submitter and tasks agree on it; one process keeps
    the plain id."""
    from robustbench_convnorm import distributed
    from robustbench_convnorm.config import config_from_dict, expand_grid
    from robustbench_convnorm.identity import data_parallel_run_id

    assert distributed.planned_world_size(env={"WORLD_SIZE": "4", "RANK": "0"}) == 4
    assert distributed.planned_world_size("slurm", 2, env={}) == 2
    assert distributed.planned_world_size("local", 2, env={}) == 1
    assert distributed.planned_world_size(None, 1, env={}) == 1
    specs = expand_grid(config_from_dict({k: v for k, v in TINY.items()}))
    plain = [s.run_id for s in specs]
    assert [s.run_id for s in distributed.tag_run_ids(specs, 1)] == plain
    tagged = distributed.tag_run_ids(specs, 3)
    assert [s.run_id for s in tagged] == [p + "-dp3" for p in plain] == [data_parallel_run_id(p, 3) for p in plain]
    assert all(s.run_dir.name == s.run_id for s in tagged)
