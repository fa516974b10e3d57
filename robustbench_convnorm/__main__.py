"""``python -m robustbench_convnorm COMMAND``: the console script (cli.py)."""
import sys

from .cli import main

sys.exit(main())
