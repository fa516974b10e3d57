"""What makes two runs the same trained model.

One definition serves the run id (``config.make_run_id`` hashes
:func:`run_identity`) and the leaderboard (a model row is one
:func:`model_identity`: the run identity without the seed), so a row can never
hold two differently trained models, and a re-evaluation (new ``eval``
settings, another device) keeps its run id.

Everything here works on the plain dict of a resolved config (what
``config.to_dict`` returns and what a record stores under ``config``).
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Dict, Iterable, Mapping

__all__ = ["ADDED_KEYS", "DATA_PARALLEL", "NOT_IN_RUN_ID", "NOT_IN_RUN_ID_TRAIN", "run_identity", "model_identity",
           "digest", "data_parallel_run_id", "flatten", "short_names"]

#: Sections that do not change what is trained: a run keeps its id (and its
#: checkpoint) when only these change, so it can be re-evaluated.
NOT_IN_RUN_ID = ("eval", "device", "speed", "output_dir", "name", "grid", "threads", "launcher",
                 "reproducible", "logging")
#: Keys of ``train`` that say when to stop or save, not what is trained.
NOT_IN_RUN_ID_TRAIN = ("stop_after_epochs", "checkpoint_every")
#: Config keys added after run ids were published, each with the default it
#: had when it was added: while a config holds that value the key is left out of
#: the identity, so a run that does not use the new option keeps the id (and the
#: checkpoint and records) it had before the option existed. A later change of
#: the default does not touch this table, so such a run then gets a new id.
ADDED_KEYS: Dict[str, Any] = {
    "train.attack_steps": 10,
    "train.trades_beta": 6.0,
    "train.budget": None,
    "train.select": "last",
    "train.ema": None,
    "train.loss": "cross_entropy",
    "train.loss_margin": 36 / 255,
    "train.loss_temperature": 0.25,
    "model.options": {},
}


#: The key a data-parallel run's record adds to its ``config`` ({"world_size": N}), kept in its
#: identity: N ranks add each minibatch's gradient in another order than one process does, and
#: training amplifies that rounding (docs/scaling.md, "Why a data-parallel run has its own run
#: id"), so a run over N ranks is a differently trained model than the one-process run.
DATA_PARALLEL = "data_parallel"


def data_parallel_run_id(run_id: str, world_size: int) -> str:
    """The id of ``run_id``'s run trained over ``world_size`` ranks (itself for one process)."""
    return run_id if world_size <= 1 else f"{run_id}-dp{world_size}"


def run_identity(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The part of a resolved config that the run id hashes (a new dict)."""
    ident = copy.deepcopy(dict(config))
    for key in NOT_IN_RUN_ID:
        ident.pop(key, None)
    train = ident.get("train")
    if isinstance(train, dict):
        for key in NOT_IN_RUN_ID_TRAIN:
            train.pop(key, None)
    if isinstance(train, dict) and train.get("budget") is not None:
        train.pop("epochs", None)  # the budget decides the epochs: it is what the id hashes
    for dotted, default in ADDED_KEYS.items():
        section, _, leaf = dotted.partition(".")
        holder = ident.get(section)
        if isinstance(holder, dict) and leaf in holder and holder[leaf] == default:
            del holder[leaf]
    return ident


def model_identity(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The run identity without the seed: one trained configuration, whatever its seed."""
    ident = run_identity(config)
    ident.pop("seeds", None)
    ident.pop("seed", None)
    return ident


def digest(identity: Mapping[str, Any], length: int = 8) -> str:
    """A short stable hash of an identity (the run id's suffix)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def flatten(obj: Any, prefix: str = "") -> Dict[str, Any]:
    """{'train.lr': 0.1, 'normalizers.0.options.kernel': 3, ...}: nested dicts, and
    lists of dicts, become dotted keys; other lists stay values; an empty dict
    adds nothing (it says what a missing one says)."""
    out: Dict[str, Any] = {}
    if isinstance(obj, Mapping):
        items: Iterable = ((str(k), v) for k, v in obj.items())
    elif isinstance(obj, list) and obj and all(isinstance(v, Mapping) for v in obj):
        items = ((str(i), v) for i, v in enumerate(obj))
    else:
        return {prefix: obj} if prefix else {}
    for key, value in items:
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            out.update(flatten(value, path))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def short_names(keys: Iterable[str]) -> Dict[str, str]:
    """Each dotted key -> its shortest trailing part that no other key shares,
    list indices left out: {'train.epochs': 'epochs', 'normalizers.0.options.kernel': 'kernel'}."""
    parts = {k: [p for p in k.split(".") if not p.isdigit()] or [k] for k in keys}
    out: Dict[str, str] = {}
    for key, words in parts.items():
        for n in range(1, len(words) + 1):
            tail = words[-n:]
            clash = any(other != key and ws[-n:] == tail for other, ws in parts.items())
            if not clash:
                break
        out[key] = ".".join(tail)
    return out

