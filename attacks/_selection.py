"""Which test examples an evaluation uses: the conversion of stored images to
model inputs, and the walk along the seeded order that picks correctly
classified examples for evaluators such as SimBA."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch

from ._sharding import Shard
from .base import batches


def evaluation_order(n_total: int, n_examples: Optional[int], seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """The protocol's seeded order of the ``n_total`` test examples, and the
    examples it evaluates: the first ``n_examples`` of that order (all when None
    or more than there are), sorted. Anything that must see the same images as
    an evaluation (the masking diagnosis, the GPU check's test subset) takes them
    from here."""
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed)).numpy()
    n_eval = n_total if n_examples is None else min(n_examples, n_total)
    return order, np.sort(order[:n_eval])


def to_float(x_test: torch.Tensor, idx: np.ndarray, device, dtype, chunk: int) -> torch.Tensor:
    """x_test[idx] as float in [0, 1] on ``device``, converted there chunk by chunk."""
    out = torch.empty((len(idx),) + tuple(x_test.shape[1:]), dtype=dtype, device=device)
    idx_t = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    for start, stop in batches(len(idx), chunk):
        part = x_test[idx_t[start:stop].to(x_test.device)].to(device, non_blocking=True)
        out[start:stop] = part.to(dtype) / 255 if part.dtype == torch.uint8 else part.to(dtype)
    return out


def to_labels(y_test: torch.Tensor, idx: np.ndarray, device) -> torch.Tensor:
    """y_test[idx] on ``device``."""
    return y_test[torch.as_tensor(idx).to(y_test.device)].to(device)


def pick_correct(wanted: Optional[int], order: np.ndarray, n_eval: int, head_correct: np.ndarray,
                 predict: Callable[[np.ndarray], np.ndarray], batch_size: int,
                 team: Shard) -> Tuple[np.ndarray, np.ndarray, int]:
    """The first ``wanted`` (None: all) correctly classified examples along ``order``.

    The evaluated examples ``order[:n_eval]`` come first and their outcome is
    known (``head_correct``, aligned with them: the clean evaluator's); past
    them the walk classifies further batches of the order, one batch per rank
    at a time, gathered, so that every rank picks the same examples.
    Returns (picked test-set indices, their positions in ``order``, how many
    examples of the order were walked)."""
    positions = np.flatnonzero(np.asarray(head_correct, dtype=bool))
    if wanted is not None and len(positions) >= wanted:
        positions = positions[:wanted]
        return order[positions], positions, int(positions[-1]) + 1
    found = [positions]
    have, walked = len(positions), n_eval
    spans = [(n_eval + a, n_eval + b) for a, b in batches(len(order) - n_eval, batch_size)]
    for first in range(0, len(spans), team.world):
        round_spans = spans[first:first + team.world]

        def classify_mine():
            if team.rank >= len(round_spans):
                return None
            start, stop = round_spans[team.rank]
            return np.asarray(predict(order[start:stop]), dtype=bool)

        for (start, stop), ok in zip(round_spans, team.run_and_gather(classify_mine)):
            hits = start + np.flatnonzero(ok)
            walked = stop
            if wanted is not None and have + len(hits) >= wanted:
                hits = hits[:wanted - have]
                found.append(hits)
                return order[np.concatenate(found)], np.concatenate(found), int(hits[-1]) + 1
            found.append(hits)
            have += len(hits)
    positions = np.concatenate(found)
    return order[positions], positions, walked
