"""``python -m robustbench_convnorm.run``: see ``cli``."""
import sys

from .cli import main

sys.exit(main())
