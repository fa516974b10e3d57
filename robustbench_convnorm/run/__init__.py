"""The run command: a grid of runs, each trained, evaluated and recorded.

    python -m robustbench_convnorm.run CONFIG [options]      (cli.py: --help)
    robustbench-convnorm run CONFIG [options]

- ``cli``: arguments, the checks before any work, the grid loop and its
  progress lines, the summary;
- ``grid``: what is checked and shown before a run starts (names and
  options, data, output folder, --only, --dry-run's listing);
- ``listing``: --list, every registry entry with its options and defaults;
- ``execute``: one run (lock, data, model, training, evaluation, record,
  run.log), and --eval-only;
- ``evaluation``: the evaluation every record gets (attacks, sanity checks,
  Lipschitz report), shared with ``robustbench_convnorm.evaluate``.

The names below are the package's interface (tests, benchmarks and the
launchers use them).
"""
from ..config import expand_grid, load_config
from .cli import config_warnings, main, parse_args, summarize
from .evaluation import evaluate_into
from .execute import LOCKED, PER_EXAMPLE, DataCache, apply_threads, execute_run
from .grid import check_data, check_output_dir, preflight, print_grid, resolve_device, select_only
from .listing import list_text

__all__ = ["LOCKED", "PER_EXAMPLE", "DataCache", "apply_threads", "check_data", "check_output_dir",
           "config_warnings", "evaluate_into", "execute_run", "expand_grid", "list_text", "load_config", "main",
           "parse_args", "preflight", "print_grid", "resolve_device", "select_only", "summarize"]
