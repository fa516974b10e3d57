"""Optional TensorBoard event files (``logging.tensorboard: true``), beside a
run's train_log.csv and run.log, in ``runs/<run_id>/tensorboard/``:

- per epoch (step = epoch): ``train/loss``, ``train/acc``, ``train/lr``,
  ``train/seconds``, ``train/images_per_second``, ``val/clean_acc``,
  ``val/pgd_acc`` (the train_log.csv row);
- after the evaluation (step = epochs trained): ``eval/<metric>`` for every
  number of the record's metrics (``eval/clean_acc``, ``eval/pgd20_acc``,
  ``eval/worst_case_acc``, ...), and ``eval/<evaluator>/seconds``.

Written through ``torch.utils.tensorboard``, which needs the ``tensorboard``
package (``pip install tensorboard``). When it is missing the run goes on
without event files and says so once. Off (the default), nothing is
imported or written. Only the process that writes the run's files writes
them (rank 0 under torchrun). ``tensorboard --logdir <output_dir>/runs``
shows every run of a grid side by side.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from . import distributed, logs

__all__ = ["DIR", "MISSING", "open_writer", "log_epoch", "log_record"]

DIR = "tensorboard"
MISSING = ("logging.tensorboard is on but the tensorboard package is not installed (pip install tensorboard); "
           "this run writes no TensorBoard event files")
_log = logs.get_logger("tensorboard")


def _enabled(config) -> bool:
    section = getattr(config, "logging", None)
    return bool(getattr(section, "tensorboard", False)) and distributed.is_writer()


def open_writer(config, run_dir, warn: Optional[Callable[[str], Any]] = None):
    """A SummaryWriter on ``run_dir/tensorboard`` when the config asks for one
    (None otherwise, or when the package is missing: then ``warn`` gets
    MISSING; default: a warning of the package's logger)."""
    if not _enabled(config):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        (warn or _log.warning)(MISSING)
        return None
    return SummaryWriter(log_dir=str(Path(run_dir) / DIR))


def _number(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


_EPOCH_TAGS = {"loss": "train/loss", "train_acc": "train/acc", "lr": "train/lr", "seconds": "train/seconds",
               "images_per_second": "train/images_per_second", "val_clean_acc": "val/clean_acc",
               "val_pgd_acc": "val/pgd_acc"}


def log_epoch(writer, row: Dict[str, Any]) -> None:
    """One train_log.csv row as scalars at step = its epoch; flushed, so a
    killed run keeps what it logged."""
    if writer is None:
        return
    for key, tag in _EPOCH_TAGS.items():
        value = _number(row.get(key))
        if value is not None:
            writer.add_scalar(tag, value, int(row["epoch"]))
    writer.flush()


def log_record(config, run_dir, record: Dict[str, Any]) -> None:
    """A finished evaluation's numbers (see the module's doc)."""
    writer = open_writer(config, run_dir)
    if writer is None:
        return
    step = int((record.get("timings") or {}).get("epochs_done") or 0)
    try:
        for key, value in sorted((record.get("metrics") or {}).items()):
            number = _number(value)
            if number is not None:
                writer.add_scalar(f"eval/{key}", number, step)
        for name, details in sorted((record.get("evaluations") or {}).items()):
            seconds = _number((details or {}).get("seconds"))
            if seconds is not None:
                writer.add_scalar(f"eval/{name}/seconds", seconds, step)
    finally:
        writer.close()
