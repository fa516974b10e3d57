"""Sharded evaluation: ranks that each run part of the batches and gather
their outcomes report exactly what one process reports, example by example.
No torch.distributed here: the ranks are threads that take turns, and the
gather hands each rank every rank's object in rank order."""
import threading

import pandas as pd
import pytest
import torch
from torch import nn

from attacks import evaluate
from attacks.checks import StateChangedError


class TakeTurns:
    """Runs ``fn(rank, gather)`` for every rank in its own thread, one thread
    at a time: a rank runs until it gathers, then the next rank runs. Only one
    evaluation touches torch's global RNG at any moment, as in separate processes."""

    def __init__(self, world):
        self.world = world
        self.cond = threading.Condition()
        self.turn = 0
        self.rounds = {}
        self.calls = [0] * world

    def _pass_turn(self, rank):
        self.turn = (rank + 1) % self.world
        self.cond.notify_all()

    def gather_for(self, rank):
        def gather(obj):
            with self.cond:
                slot = self.rounds.setdefault(self.calls[rank], [None] * self.world)
                self.calls[rank] += 1
                slot[rank] = (obj,)
                self._pass_turn(rank)
                self.cond.wait_for(lambda: self.turn == rank and all(s is not None for s in slot))
                return [s[0] for s in slot]
        return gather

    def run(self, fn):
        out, errors = [None] * self.world, [None] * self.world

        def body(rank):
            with self.cond:
                self.cond.wait_for(lambda: self.turn == rank)
            try:
                out[rank] = fn(rank, self.gather_for(rank))
            except Exception as err:  # reported below
                errors[rank] = err
            finally:
                with self.cond:
                    self.finished = getattr(self, "finished", 0) + 1
                    self._pass_turn(rank)
        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        return out, errors


class SmallConv(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.lin = nn.Linear(6 * 4, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.6)

    def forward(self, x):
        h = torch.relu(self.conv(x - 0.5))
        return self.lin(nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))


def _data(n=90):
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(n, 3, 6, 6, generator=g) * 255).to(torch.uint8)
    with torch.no_grad():
        y = SmallConv()(x.float() / 255).argmax(1)
    flip = torch.rand(n, generator=g) < 0.3        # some misclassified examples
    return x, torch.where(flip, (y + 1) % 4, y)


CFG = {"n_examples": 27, "batch_size": 4, "seed": 2, "evaluators": [
    {"type": "clean"}, {"type": "fgsm", "eps": 0.05},
    {"type": "pgd", "eps": 0.05, "step": 0.02, "steps": 3, "restarts": 2},
    {"type": "noise", "eps": 0.05, "samples": 2},
    # more images than the evaluated examples hold correct ones: the walk goes past them
    {"type": "simba", "n_images": 30, "max_iters": 25, "step": 0.3, "batch_size": 7}]}


def _sharded(world, cfg=CFG, model_factory=SmallConv):
    x, y = _data()
    return TakeTurns(world).run(lambda rank, gather: evaluate(
        model_factory(), x, y, cfg, device="cpu", log=lambda s: None, shard=(rank, world), gather=gather))


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_ranks_report_what_one_process_reports(world):
    x, y = _data()
    single = evaluate(SmallConv(), x, y, CFG, device="cpu", log=lambda s: None)
    reports, errors = _sharded(world)
    assert errors == [None] * world
    columns = ["clean_correct", "fgsm_eps0p05_correct", "pgd3_eps0p05_step0p02_restarts2_correct",
               "pgd3_eps0p05_step0p02_restarts2_l2", "noise_eps0p05_samples2_correct",
               "simba_step0p3_maxiters25_correct", "simba_step0p3_maxiters25_queries"]
    assert set(columns) <= set(single.per_example.columns)
    # the walk for SimBA went past the evaluated examples, and found its 30
    assert single.details["simba_step0p3_maxiters25"]["n_examined"] > 27
    assert single.per_example["simba_step0p3_maxiters25_queries"].notna().sum() == 30
    for report in reports:
        pd.testing.assert_frame_equal(report.per_example, single.per_example)
        assert report.metrics == single.metrics
        assert report.flags == single.flags
        assert report.protocol == dict(single.protocol, world_size=world)
        for name, d in single.details.items():
            assert {k: v for k, v in report.details[name].items() if k != "seconds"} == \
                   {k: v for k, v in d.items() if k != "seconds"}, name
    # the random start and the noise did something (so equality is not trivial)
    assert single.per_example["pgd3_eps0p05_step0p02_restarts2_l2"].dropna().nunique() > 10
    assert 0 < single.metrics["noise_eps0p05_samples2_acc"] < single.metrics["clean_acc"]


class BreaksOnRankOne(SmallConv):
    """Moves a buffer during the attacks, but only in the process of rank 1."""

    def __init__(self, moving):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))
        self.moving = moving

    def forward(self, x):
        if self.moving:
            self.calls += 1
        return super().forward(x)


def test_an_error_on_one_rank_is_raised_on_every_rank():
    made = []

    def factory():
        made.append(BreaksOnRankOne(moving=len(made) == 1))
        return made[-1]

    cfg = dict(CFG, checks=False, evaluators=[{"type": "clean"}, {"type": "fgsm"}])
    _, errors = _sharded(2, cfg, factory)
    assert all(isinstance(e, StateChangedError) for e in errors)
    assert "calls" in str(errors[1]) and "rank 1 of 2" in str(errors[0])


def test_bad_shard_settings_are_single_clear_messages():
    x, y = _data(n=8)
    with pytest.raises(ValueError, match="needs gather=fn"):
        evaluate(SmallConv(), x, y, {}, device="cpu", shard=(0, 2))
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        evaluate(SmallConv(), x, y, {}, device="cpu", shard=(2, 2), gather=lambda o: [o, o])


def test_a_total_only_some_batches_report_is_no_total():
    """A total missing from some batches is None, never the partial sum of the
    batches that had it (PGD's loss curve would divide it by every example)."""
    import numpy as np

    from attacks.base import BatchOutcome, add_totals, combine
    from attacks.pgd import PGD

    assert add_totals({"a": 1, "b": [1, 2]}, {"a": 2, "b": [3, 4]}) == {"a": 3, "b": [4, 6]}
    assert add_totals({"a": 1, "b": 5}, {"a": 2}) == {"a": 3, "b": None}
    assert add_totals({"a": 1}, {"a": 2, "c": 7}) == {"a": 3, "c": None}
    assert add_totals({"v": {"x": 1, "y": 2}}, {"v": {"x": 1}}) == {"v": {"x": 2, "y": None}}

    def part(n, loss_sums=None):
        columns = {"correct": np.ones(n, bool), "adv_correct": np.ones(n, bool), "linf": np.zeros(n),
                   "l2": np.zeros(n)}
        totals = {"validity": {"nonfinite": 0, "outside_range": 0, "outside_ball": 0}}
        if loss_sums is not None:
            totals["loss_sums"] = loss_sums
        return BatchOutcome(per_example=columns, totals=totals)

    ev = PGD(steps=2)
    assert combine(ev, [part(4, [4.0, 8.0]), part(4, [4.0, 8.0])]).info["loss_curve"] == [1.0, 2.0]
    for parts in ([part(4, [4.0, 8.0]), part(4)], [part(4), part(4, [4.0, 8.0])]):
        assert "loss_curve" not in combine(ev, parts).info
