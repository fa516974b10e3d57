"""Build a run's model from its config and its data's shape and statistics."""
from __future__ import annotations

from typing import Any, Dict

from .models import build_model
from .normalizers import get_normalizer


def model_meta(data) -> Dict[str, Any]:
    """What a model needs to know about its data (saved with checkpoints)."""
    mean, std = data.mean_std()
    return {"num_classes": data.num_classes, "in_channels": data.image_shape[0],
            "image_size": list(data.image_shape[1:]), "mean": mean, "std": std}


def build_run_model(cfg, meta: Dict[str, Any]):
    entry = cfg.normalizers[0]
    normalizer = get_normalizer(entry.name, **entry.options)
    model = build_model(cfg.model.arch, normalizer, num_classes=meta["num_classes"],
                        in_channels=meta["in_channels"], mean=meta["mean"], std=meta["std"],
                        batchnorm=cfg.batchnorm, width=cfg.model.width,
                        **getattr(cfg.model, "options", {}))
    model.normalizer = normalizer  # the penalty needs it; not a module, so not in the state dict
    return model
