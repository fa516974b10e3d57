"""``python -m robustbench_convnorm.run``: see ``cli``."""
import sys

from .. import reproducible
from .cli import main

reproducible.allow_reexec()  # a command line of its own: a mode asked for late may start it again
try:
    _argv = reproducible.take_option(sys.argv[1:])
except ValueError as _err:
    print(f"error: {_err}", file=sys.stderr)
    sys.exit(2)
sys.exit(main(_argv))
