"""Checkpoints written atomically (temporary file, then rename) and read with
``weights_only=True``."""
from __future__ import annotations

from typing import Any, Dict

import torch

from . import atomic


def save_atomic(obj: Dict[str, Any], path) -> None:
    atomic.torch_save(obj, path)


def load_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_states(device: torch.device) -> Dict[str, Any]:
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def load_model(path, device="cpu"):
    """Rebuild a trained model from a run's checkpoint: (model in eval mode, run config dict)."""
    from .builders import build_run_model
    from .config import config_from_dict

    ckpt = load_checkpoint(path, map_location=device)
    cfg = config_from_dict(ckpt["run_config"], source=f"{path} (saved config)")
    model = build_run_model(cfg, ckpt["model_meta"]).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt["run_config"]
