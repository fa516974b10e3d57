"""Errors that void an evaluation: the model's state moved during an attack, or
an attack left it in training mode.

The state is every parameter, every buffer and every tensor kept as a plain
attribute of a module (``self.cache = torch...``): state outside the state
dict moves the outputs as surely as a buffer does. A tensor attribute that
appears or disappears (a cache filled on first use, cleared later) is not a
change; one whose value differs is.
"""
from __future__ import annotations

import hashlib
from typing import Dict, List

import torch
from torch import nn


class StateChangedError(RuntimeError):
    """A model's parameters, buffers, tensor attributes or train/eval mode changed during an attack."""


def _tensor_digest(tensor: torch.Tensor) -> str:
    t = tensor.detach()
    h = hashlib.sha1(f"{t.dtype}|{tuple(t.shape)}|".encode())
    flat = t.reshape(-1).contiguous()
    if flat.numel():
        h.update(flat.view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def state_fingerprint(model: nn.Module) -> Dict[str, str]:
    """A digest of every parameter, buffer and plain tensor attribute of a
    module (``param:``/``buffer:``/``attr:`` + name -> sha1 of its bytes)."""
    out: Dict[str, str] = {}
    for name, p in model.named_parameters():
        out["param:" + name] = _tensor_digest(p)
    for name, b in model.named_buffers():
        out["buffer:" + name] = _tensor_digest(b)
    for mod_name, module in model.named_modules():
        # parameters and buffers live in _parameters/_buffers, not in vars()
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor):
                out[f"attr:{mod_name + '.' if mod_name else ''}{attr}"] = _tensor_digest(value)
    return out


def changed_state(before: Dict[str, str], after: Dict[str, str]) -> List[str]:
    keys = set(before) | set(after)
    # a tensor attribute may come into being (a lazily filled cache) or go away
    keys = {k for k in keys if not k.startswith("attr:") or (k in before and k in after)}
    return sorted(k for k in keys if before.get(k) != after.get(k))


def training_modules(model: nn.Module) -> List[str]:
    return [name or "(model)" for name, m in model.named_modules() if m.training]


def assert_state_unchanged(before: Dict[str, str], after: Dict[str, str], attack: str) -> None:
    changed = changed_state(before, after)
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise StateChangedError(
            f"the model's state changed during evaluator '{attack}': {shown}. An attack must not move "
            "running statistics, spectral-norm vectors, cached filters or any tensor the model keeps; "
            "make the module keep them fixed in eval mode (or under torch.no_grad), then re-run the evaluation.")


def assert_eval_mode(model: nn.Module, attack: str) -> None:
    still = training_modules(model)
    if still:
        raise StateChangedError(
            f"evaluator '{attack}' left modules in training mode: {', '.join(still[:5])}; "
            "every attack must run the model in eval mode")
