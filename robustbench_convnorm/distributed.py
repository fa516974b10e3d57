"""Data-parallel runs under torchrun: the distributed glue, in one place.

    torchrun --nproc_per_node=N -m robustbench_convnorm.run CONFIG

``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are read here and nowhere else.
Every helper below is a no-op in a plain process, so the run and the
training loop call them unconditionally. What DDP changes:

- each rank pins ``cuda:LOCAL_RANK`` (NCCL) or uses the CPU (Gloo);
- the config's ``train.batch_size`` is the global batch: every rank draws the
  same global batch (same order, same augmentation) and keeps its contiguous
  slice (:func:`shard_batches`); a rank's mean loss is weighted by its share
  of the batch, so the ranks' averaged gradient is the global batch's (an
  uneven last batch included; in one smaller than the world size, a rank
  with no example runs a stand-in example at weight 0, so no batch is
  skipped);
- the model is wrapped in DistributedDataParallel after the normalizer has
  built it (optionally with SyncBatchNorm, CUDA only);
- rank 0 alone writes: the others run with ``atomic`` writes switched off and
  their standard output silenced, and follow rank 0's lock decision;
- the training methods' randomness stays in lockstep on every rank, and free
  AT's perturbation of each rank's slice is gathered after every batch, so
  rank 0's checkpoint holds the whole state and resume needs nothing else.
"""
from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist

from . import atomic

__all__ = ["Context", "planned_world_size", "tag_run_ids", "setup", "teardown", "current", "is_writer",
           "world_size", "requested", "acquire_lock", "agree", "load_latest", "wrap_model", "shard_batches",
           "sum_over_ranks", "sync_model", "all_gather_object", "evaluate_kwargs", "record_fields",
           "config_fields", "split_bounds"]


@dataclass
class Context:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    sync_batchnorm: bool = False


_CTX: Optional[Context] = None


def requested(env=os.environ) -> bool:
    """Whether this process was started as one of several ranks (torchrun)."""
    try:
        return int(env.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def planned_world_size(launcher: Optional[str] = None, tasks_per_node: int = 1, env=os.environ) -> int:
    """Ranks each run of this command trains over, known before any process
    group exists: torchrun's (or a data-parallel SLURM task's) WORLD_SIZE, or
    what ``--launcher slurm`` with ``launcher.tasks_per_node`` will start."""
    if requested(env):
        return int(env["WORLD_SIZE"])
    if launcher == "slurm" and tasks_per_node > 1:
        return tasks_per_node
    return 1


def tag_run_ids(specs, world: int):
    """Each run's id for training over ``world`` ranks (identity.data_parallel_run_id):
    a data-parallel run is not the one-process run (docs/scaling.md says why), so it
    gets a folder, checkpoint and leaderboard row of its own. Changes ``specs`` in place."""
    from .identity import data_parallel_run_id

    for spec in specs:
        spec.run_id = data_parallel_run_id(spec.run_id, world)
    return specs


def setup(device: torch.device, *, sync_batchnorm: bool = False) -> Optional[Context]:
    """Join the process group torchrun describes; None in a plain process.
    ``device`` is the config's resolved device (its type decides the backend)."""
    global _CTX
    if not requested():
        return None
    if _CTX is not None:
        return _CTX
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise ValueError("WORLD_SIZE > 1 but RANK is missing or not a number: start data-parallel runs "
                         "with torchrun (it sets RANK, WORLD_SIZE and LOCAL_RANK)") from None
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"rank {rank} has LOCAL_RANK {local_rank} but this node shows "
                             f"{torch.cuda.device_count()} GPU(s); start at most that many ranks per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
        if sync_batchnorm:
            raise ValueError("SyncBatchNorm runs on CUDA only (torch refuses it on the CPU); "
                             "drop --sync-batchnorm or run on GPUs")
    dist.init_process_group(backend)
    _CTX = Context(rank, world, local_rank, backend, device, sync_batchnorm)
    if rank != 0:
        atomic.set_writes_enabled(False)          # rank 0 alone writes files
        sys.stdout = open(os.devnull, "w")        # and logs; errors still reach stderr
    return _CTX


def teardown() -> None:
    global _CTX
    if _CTX is not None:
        if dist.is_initialized():
            dist.destroy_process_group()
        if _CTX.rank != 0:
            atomic.set_writes_enabled(True)
            sys.stdout.close()
            sys.stdout = sys.__stdout__
    _CTX = None


def current() -> Optional[Context]:
    return _CTX


def is_writer() -> bool:
    return _CTX is None or _CTX.rank == 0


def world_size() -> int:
    return 1 if _CTX is None else _CTX.world_size


def record_fields() -> Dict[str, Any]:
    """What a run's record says about how it was parallelised (its ``config``
    also gets identity.DATA_PARALLEL under DDP: config_fields)."""
    if _CTX is None:
        return {"world_size": 1}
    return {"world_size": _CTX.world_size,
            "distributed": {"backend": _CTX.backend, "sync_batchnorm": _CTX.sync_batchnorm}}


def config_fields() -> Dict[str, Any]:
    """What a data-parallel run adds to its record's ``config``: the world size,
    part of its identity (identity.DATA_PARALLEL), so the leaderboard gives it
    its own row. Nothing in a plain process."""
    from .identity import DATA_PARALLEL

    return {} if _CTX is None else {DATA_PARALLEL: {"world_size": _CTX.world_size}}


# ---------------------------------------------------------------- agreement

def agree(value: Any) -> Any:
    """Rank 0's value (picklable) on every rank."""
    if _CTX is None:
        return value
    box = [value if _CTX.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (the ``gather`` of sharded evaluation)."""
    if _CTX is None:
        return [obj]
    out: List[Any] = [None] * _CTX.world_size
    dist.all_gather_object(out, obj)
    return out


class FollowerLock:
    """What ranks other than 0 hold: rank 0 holds the run's real lock."""
    took_over = None

    def ensure_held(self) -> None:
        pass

    def held(self) -> bool:
        return True

    def beat(self) -> None:
        pass

    def release(self) -> None:
        pass


def acquire_lock(run_dir, owner: Optional[str] = None):
    """The run's lock (lock.acquire); under DDP rank 0 takes it and every rank
    follows its outcome, so all ranks train the run or all skip it."""
    from .lock import RunLocked, acquire

    if _CTX is None:
        return acquire(run_dir, owner=owner)
    lock, holder = None, None
    if _CTX.rank == 0:
        try:
            lock = acquire(run_dir, owner=owner)
        except RunLocked as err:
            holder = err.holder
    holder = agree(holder)
    if holder is not None:
        raise RunLocked(run_dir, holder)
    return lock if _CTX.rank == 0 else FollowerLock()


def load_latest(path, map_location="cpu", log=print):
    """checkpoints.load_latest on rank 0, which may set damaged files aside;
    the other ranks then load the very file it chose (or none)."""
    from .checkpoints import load_checkpoint, load_latest as pick

    if _CTX is None:
        return pick(path, map_location=map_location, log=log)
    if _CTX.rank == 0:
        ckpt, used, notes = pick(path, map_location=map_location, log=log)
        agree(None if ckpt is None else (str(used), notes))
        return ckpt, used, notes
    choice = agree(None)
    if choice is None:
        return None, None, []
    return load_checkpoint(choice[0], map_location=map_location), Path(choice[0]), choice[1]


# ---------------------------------------------------------------- training

def wrap_model(model: torch.nn.Module, forward: Optional[Callable], log=print) -> Optional[Callable]:
    """The forward the training method calls: ``forward`` unchanged in a plain
    process; under DDP the wrapped ``model`` (whose own forward stays usable,
    unsynchronised, for validation and evaluation)."""
    if _CTX is None:
        return forward
    from torch.nn.parallel import DistributedDataParallel

    if forward is not None and forward is not model:
        log("  torch.compile is off under DDP (the DDP-wrapped eager model trains)")
    if _CTX.sync_batchnorm:
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the BatchNorm children in place
    ids = [_CTX.local_rank] if _CTX.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def split_bounds(n: int, world: int, rank: int) -> Tuple[int, int]:
    """Rank's contiguous slice [lo, hi) of n examples (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


@dataclass
class BatchShard:
    """This rank's part of the current global batch, as a training method sees it."""
    lo: int
    hi: int
    n: int
    world: int
    rank: int

    @property
    def empty(self) -> bool:
        """No example of this batch is this rank's (a last batch smaller than the
        world size): the rank trains a stand-in example at weight 0, since every
        rank must join DDP's gradient averaging."""
        return self.hi == self.lo

    @property
    def weight(self) -> float:
        """Factor on the rank's mean loss: DDP averages gradients over ranks, so
        world * (local / global) makes the average the global mean's gradient."""
        return self.world * (self.hi - self.lo) / self.n

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's ``rows`` (its slice), concatenated in batch order."""
        sizes = [b - a for a, b in (split_bounds(self.n, self.world, r) for r in range(self.world))]
        padded = rows.new_zeros((max(sizes),) + tuple(rows.shape[1:]))
        padded[:len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])


class ShardedBatches:
    """The global batches of ``batches``, each cut to this rank's slice; sets
    ``method.shard`` for the batch being trained."""

    def __init__(self, batches, method, ctx: Context):
        self.batches, self.method, self.ctx = batches, method, ctx

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        try:
            for x, y in self.batches:
                n = len(y)
                lo, hi = split_bounds(n, self.ctx.world_size, self.ctx.rank)
                shard = self.method.shard = BatchShard(lo, hi, n, self.ctx.world_size, self.ctx.rank)
                # fewer examples than ranks: a rank without one trains the first at weight 0
                yield (x[:1], y[:1]) if shard.empty else (x[lo:hi], y[lo:hi])
        finally:
            self.method.shard = None


def shard_batches(batches, method):
    return batches if _CTX is None else ShardedBatches(batches, method, _CTX)


def sum_over_ranks(*values):
    """Epoch totals (device tensors or numbers) summed over ranks; one collective."""
    if _CTX is None:
        return values
    device = _CTX.device
    flat = torch.stack([torch.as_tensor(v, device=device).to(torch.float64) for v in values])
    dist.all_reduce(flat)
    out = []
    for v, total in zip(values, flat):
        if isinstance(v, torch.Tensor):
            out.append(total.to(v.dtype))
        else:
            out.append(type(v)(total.item()))
    return tuple(out)


@torch.no_grad()
def sync_model(model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (BatchNorm statistics
    drift per rank without SyncBatchNorm), so every rank evaluates one model."""
    if _CTX is None:
        return
    for t in list(model.parameters()) + list(model.buffers()):
        if t.numel():
            # through a copy_: the version counter moves, so caches derived
            # from the weights (normalizers/weight_cache.py) see the change
            incoming = t.detach().clone()
            dist.broadcast(incoming, src=0)
            t.copy_(incoming)


def evaluate_kwargs(evaluate: Callable) -> Dict[str, Any]:
    """``shard`` and ``gather`` for attacks.protocol.evaluate where it takes
    them: every rank attacks its part and receives the whole report."""
    if _CTX is None:
        return {}
    params = inspect.signature(evaluate).parameters
    if "shard" in params and "gather" in params:
        return {"shard": (_CTX.rank, _CTX.world_size), "gather": all_gather_object}
    return {}  # this evaluate cannot shard: every rank evaluates everything (same result, slower)
