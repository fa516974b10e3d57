"""Training: methods (natural, free, fgsm_rs), schedules, and the shared loop."""
from .loop import CHECKPOINT, TRAIN_LOG, TrainResult, train_run
from .methods import METHODS, Method

__all__ = ["CHECKPOINT", "METHODS", "Method", "TRAIN_LOG", "TrainResult", "train_run"]
