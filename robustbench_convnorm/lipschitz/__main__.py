"""``python -m robustbench_convnorm.lipschitz``: see ``cli``."""
import sys

from .cli import main

sys.exit(main())
