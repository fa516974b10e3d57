"""Helpers shared by the scale-out tests: tiny grids, the command as a
subprocess with this checkout's code, and what the workers printed."""
import collections
import json
import re
from pathlib import Path

import cli_util
from cli_util import ROOT, comparable, env, finish, records, start  # noqa: F401  (the scale-out tests import them here)

#: a grid of tiny runs that still exercises augmentation, an uneven last batch
#: (99 = 3 x 32 + 3) and both training paths
TINY = {
    "data": {"source": "synthetic", "options": {"n_train": 99, "n_test": 40, "size": 8, "num_classes": 4},
             "augment": {"crop_padding": 1, "flip": True}},
    "model": {"arch": "convnet", "width": 0.5},
    "normalizers": [{"name": "vanilla"}],
    "train": {"method": "natural", "epochs": 2, "batch_size": 32, "lr": 0.05, "schedule": "cosine",
              "val_examples": 16, "val_pgd_steps": 2, "replays": 2},
    "eval": {"batch_size": 40, "lipschitz": False, "evaluators": [{"type": "clean"}]},
    "seeds": [0],
    "device": "cpu",
    "threads": 1,           # the same arithmetic in every worker, whatever share of the cores it gets
}


def write_config(path: Path, out: Path, **sections) -> Path:
    return cli_util.write_config(path, out, TINY, **sections)


_HEADER = re.compile(r"^\[\d+/\d+\] (\S+)(?:  elapsed .*)?$")  # the grid's line before each run
_EPOCH = re.compile(r"^\s+epoch \d+/\d+: loss")


def trained_runs(stdout: str) -> set:
    """Runs a worker trained (printed at least one epoch for), from its output."""
    trained, current = set(), None
    for line in stdout.splitlines():
        m = _HEADER.match(line)
        if m:
            current = m.group(1)
        elif current and _EPOCH.match(line):
            trained.add(current)
    return trained


def count_trainings(*stdouts) -> collections.Counter:
    return collections.Counter(run for out in stdouts for run in trained_runs(out))


def leaderboard_runs(out_dir) -> set:
    """Run ids in the leaderboard's per-run table, as its last build wrote it."""
    stamp = json.loads((Path(out_dir) / ".leaderboard" / "last_build.json").read_text())
    import pandas as pd

    return set(pd.read_csv(stamp["paths"]["runs_csv"])["run_id"])
