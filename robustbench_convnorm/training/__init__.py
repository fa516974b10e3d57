"""Training: methods (natural, free, fgsm_rs; pgd, trades), schedules, and the shared loop."""
from . import multistep  # noqa: F401  (registers pgd and trades)
from .loop import CHECKPOINT, TRAIN_LOG, TrainResult, train_run
from .methods import METHODS, Method

__all__ = ["CHECKPOINT", "METHODS", "Method", "TRAIN_LOG", "TrainResult", "train_run"]
