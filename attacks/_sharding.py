"""Splitting an evaluation between processes (data-parallel ranks).

``Shard(shard=(rank, world_size), gather=fn)``: ``fn(obj)`` must all-gather
a picklable object across the ranks and return the list of every rank's
object in rank order (for example ``torch.distributed.all_gather_object``
into a list). Each rank takes a contiguous block of an evaluator's batches;
every gathered payload also carries the rank's error, if any, so that a
failure on one rank is raised on every rank instead of leaving the others
waiting in the next gather.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

from ._state import StateChangedError


class Shard:
    def __init__(self, shard: Optional[Sequence[int]] = None, gather: Optional[Callable[[Any], List[Any]]] = None):
        if shard is None:
            rank, world = 0, 1
        else:
            try:
                rank, world = (int(v) for v in shard)
            except (TypeError, ValueError):
                raise ValueError(f"evaluate: shard must be (rank, world_size), got {shard!r}") from None
            if world < 1 or not 0 <= rank < world:
                raise ValueError(f"evaluate: shard=(rank, world_size) needs 0 <= rank < world_size, got {shard!r}")
        if world > 1 and gather is None:
            raise ValueError(f"evaluate: shard={tuple(shard)} splits the work between {world} processes and needs "
                             "gather=fn, where fn(obj) all-gathers a picklable object and returns every rank's "
                             "object in rank order")
        self.rank, self.world, self._gather = rank, world, gather

    def mine(self, n_batches: int) -> range:
        """This rank's contiguous block of ``n_batches`` batches."""
        return range(self.rank * n_batches // self.world, (self.rank + 1) * n_batches // self.world)

    def run_and_gather(self, work: Callable[[], Any]) -> List[Any]:
        """``work()`` here, then every rank's value in rank order; an error on
        any rank is raised on all of them."""
        if self._gather is None:
            return [work()]
        try:
            value, error = work(), None
        except Exception as err:  # gathered, then raised below on every rank
            value, error = None, err
        got = list(self._gather((value, None if error is None else (type(error).__name__, str(error)))))
        if len(got) != self.world:
            raise RuntimeError(f"evaluate: gather returned {len(got)} objects for world_size {self.world}")
        if error is not None:
            raise error
        for rank, (_, err) in enumerate(got):
            if err is not None:
                kind = StateChangedError if err[0] == "StateChangedError" else RuntimeError
                raise kind(f"rank {rank} of {self.world} failed: {err[0]}: {err[1]}")
        return [value for value, _ in got]

