"""The harness's messages, through Python's logging.

Everything a run says goes to the ``robustbench_convnorm`` logger (children
such as ``robustbench_convnorm.run``). Two places show it:

- the console, set up by the command line (:func:`console`): the lines the
  run command prints, each after the time of day (``14:03:52 [2/8] ...``), on
  stdout (warnings on stderr); ``ROBUSTBENCH_CONVNORM_TIMESTAMPS=0`` leaves
  the time out (the test suite does, to match whole lines);
- the run's own log, ``<output_dir>/runs/<run_id>/run.log`` (:func:`run_log`),
  for as long as a worker works on that run: its training, evaluation and
  skips, each line with its time. A resumed run, an --eval-only or a --force
  appends to it, after a header line naming the session.

Under torchrun the ranks other than 0 write no run.log (their writes are off,
atomic.py) and their stdout is silenced (distributed.py), so their console
lines vanish too; their warnings still reach stderr.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional

from . import atomic

__all__ = ["LOGGER", "RUN_LOG", "TIMESTAMPS_ENV", "console", "run_log", "get_logger", "teller", "describe_worker"]

LOGGER = "robustbench_convnorm"
RUN_LOG = "run.log"
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
#: "0" leaves the time of day out of the console's lines
TIMESTAMPS_ENV = "ROBUSTBENCH_CONVNORM_TIMESTAMPS"


class _Stamped(logging.Formatter):
    """``HH:MM:SS message``; a message that starts with blank lines keeps
    them before the time, so that the time stays at the start of its line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        body = message.lstrip("\n")
        return message[:len(message) - len(body)] + f"{self.formatTime(record, '%H:%M:%S')} {body}"


def _console_formatter() -> logging.Formatter:
    if os.environ.get(TIMESTAMPS_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return logging.Formatter("%(message)s")
    return _Stamped()


def get_logger(name: str = "") -> logging.Logger:
    """The package's logger, or its child ``robustbench_convnorm.<name>``."""
    return logging.getLogger(f"{LOGGER}.{name}" if name else LOGGER)


class _Console(logging.Handler):
    """Info on whatever sys.stdout is at the time (pytest's capture, a rank's
    devnull), warnings and errors on sys.stderr; the bare message."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a closed or broken stream must not stop a run
            self.handleError(record)


@contextlib.contextmanager
def console() -> Iterator[None]:
    """The command line's console output for the duration of a command; the
    package's messages do not also reach the root logger's handlers."""
    logger = get_logger()
    handler = _Console()
    handler.setFormatter(_console_formatter())
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@contextlib.contextmanager
def run_log(run_dir, header: str) -> Iterator[Optional[Path]]:
    """Append every message of the package to ``run_dir/run.log`` while the
    block runs, after ``header``; yields the path (None where this process
    does not write: a data-parallel rank other than 0)."""
    path = Path(run_dir) / RUN_LOG
    stream = atomic.open_append(path)
    if stream is None:
        yield None
        return
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt=_TIME_FORMAT))
    logger = get_logger()
    saved = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        handler.emit(logging.makeLogRecord({"msg": f"=== {header}", "levelno": logging.INFO,
                                            "levelname": "INFO", "name": LOGGER}))
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)
        handler.close()
        stream.close()


def describe_worker(worker: dict) -> str:
    """'host h, pid 12, job 345' from lock.worker_identity()."""
    parts = [f"host {worker.get('host')}", f"pid {worker.get('pid')}"]
    if worker.get("job_id"):
        parts.append(f"job {worker['job_id']}")
    return ", ".join(parts)


def teller(logger: logging.Logger, also: Optional[Callable[[str], object]] = None) -> Callable[[str], None]:
    """A ``log(line)`` callable for code that takes one (the training loop, the
    evaluators, the fast path): each line goes to ``logger``, and to ``also``
    when the caller passed its own."""
    def tell(line: str) -> None:
        logger.info(str(line))
        if also is not None:
            also(line)
    return tell
