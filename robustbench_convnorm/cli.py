"""The console script: ``robustbench-convnorm COMMAND [ARGS]`` (also
``python -m robustbench_convnorm COMMAND``). Each command is the ``main`` of
its module, with its own --help:

    run          train and evaluate a config's grid      (robustbench_convnorm.run)
    evaluate     evaluate an outside model                (robustbench_convnorm.evaluate)
    leaderboard  build the leaderboard of a results dir   (robustbench_convnorm.leaderboard)
    lipschitz    a saved model's Lipschitz report, Table 9 (robustbench_convnorm.lipschitz)
    publish      records + leaderboard into a folder to commit (robustbench_convnorm.leaderboard.publish)
    masking      why a run is flagged for masking: attacks by loss and step (robustbench_convnorm.masking)

``--reproducible off|avx2|strict`` (before or after the command) pins the
CPU's kernel paths for the command and its children (reproducible.py).
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Dict, Optional, Sequence, Tuple

from . import reproducible
from .registry import closest

__all__ = ["COMMANDS", "main"]

PROG = "robustbench-convnorm"
#: command -> (module whose main(argv, prog) runs it, one line of help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "run": ("robustbench_convnorm.run", "train and evaluate the grid of a config"),
    "evaluate": ("robustbench_convnorm.evaluate", "evaluate an outside model (package.module:factory)"),
    "leaderboard": ("robustbench_convnorm.leaderboard.cli", "build the leaderboard of a results directory"),
    "lipschitz": ("robustbench_convnorm.lipschitz.cli", "a saved model's Lipschitz report, or Table 9"),
    "publish": ("robustbench_convnorm.leaderboard.publish", "copy a results folder's records for committing, "
                                                            "with its leaderboard"),
    "masking": ("robustbench_convnorm.masking", "why a run is flagged for masking: its evaluated images under "
                                                "attacks that differ in loss and step"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} [--reproducible MODE] COMMAND [ARGS]   ({PROG} COMMAND --help for its options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", f"--reproducible {'|'.join(reproducible.MODES)}: pin the CPU's kernel paths (README, "
                  "'Reproducible CPU mode')"]
    return "\n".join(lines)


def command_main(name: str) -> Callable[..., int]:
    return importlib.import_module(COMMANDS[name][0]).main


def main(argv: Optional[Sequence[str]] = None) -> int:
    if argv is None:  # the console script itself: a mode asked for late may start it again
        reproducible.allow_reexec()
    try:
        argv = reproducible.take_option(sys.argv[1:] if argv is None else argv)
    except ValueError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{PROG}: unknown command {name!r}{closest(name, COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        return command_main(name)(rest, prog=f"{PROG} {name}")
    except SystemExit as exit_:  # argparse's --help and usage errors
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)


if __name__ == "__main__":
    sys.exit(main())
