"""``python -m robustbench_convnorm COMMAND``: the console script (cli.py)."""
import sys

from .cli import main

# main() with no arguments reads sys.argv, as the console script does (--reproducible may re-execute it)
sys.exit(main())
