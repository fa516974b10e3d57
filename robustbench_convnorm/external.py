"""Outside models for ``robustbench_convnorm.evaluate``: a factory named as
``package.module:factory`` builds an ``nn.Module`` that takes images in [0, 1]
and returns logits; optional weights load into it. Every way this can go
wrong ends in one :class:`ExternalModelError` that names the problem and
the fix."""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from .registry import closest

__all__ = ["ExternalModelError", "load_factory", "build_model", "load_weights", "check_model"]

EXAMPLE = "package.module:factory, e.g. mymodels.cifar:build_wrn"


class ExternalModelError(ValueError):
    """An outside model that cannot be evaluated; the message says why and what to do."""


def _brief(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{err.__class__.__name__}: {text[0] if text else ''}".rstrip(": ")


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """The callable ``spec`` names (``module:attribute``, the attribute may be dotted)."""
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise ExternalModelError(f"--model {spec!r}: expected {EXAMPLE}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise ExternalModelError(f"--model {spec}: no module named {err.name!r}; run from the folder that "
                                     f"holds it, or add that folder to PYTHONPATH") from None
        raise ExternalModelError(f"--model {spec}: importing {module_name} failed ({_brief(err)}); install what "
                                 f"it needs") from None
    except Exception as err:  # a syntax error, or the module's own code failing
        raise ExternalModelError(f"--model {spec}: importing {module_name} failed ({_brief(err)}); fix that "
                                 f"module") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            known = [n for n in dir(obj) if not n.startswith("_")]
            raise ExternalModelError(f"--model {spec}: {getattr(obj, '__name__', module_name)} has no "
                                     f"{part!r}{closest(part, known)}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ExternalModelError(f"--model {spec}: {attr} is a {type(obj).__name__}, not a function or class; "
                                 f"name a factory that returns the model")
    return obj


def build_model(factory: Callable, spec: str) -> nn.Module:
    """``factory()``, which must be an ``nn.Module``."""
    try:
        model = factory()
    except Exception as err:
        raise ExternalModelError(f"--model {spec}: calling it failed ({_brief(err)}); the factory is called "
                                 f"with no arguments and must return the model") from None
    if not isinstance(model, nn.Module):
        raise ExternalModelError(f"--model {spec}: it returned {type(model).__name__!r}, not a torch.nn.Module; "
                                 f"return the model (inputs in [0, 1], logits out)")
    return model


def _state_dict_of(obj) -> Optional[Mapping]:
    """A state dict in what torch.load returned: itself, or its "state_dict" or "model" entry."""
    candidates = [obj] + ([obj.get("state_dict"), obj.get("model")] if isinstance(obj, Mapping) else [])
    for cand in candidates:
        if isinstance(cand, Mapping) and cand and all(isinstance(v, torch.Tensor) for v in cand.values()):
            return cand
    return None


def load_weights(model: nn.Module, path, spec: str) -> str:
    """Load ``path`` (a state_dict file, or a checkpoint holding one under
    "state_dict" or "model", such as a run's checkpoint.pt, whose listed
    SHA-256 is checked) into ``model``; returns the file's SHA-256."""
    from .checkpoints import CheckpointError, checksum_path, load_checkpoint, sha256_file

    path = Path(path)
    if not path.is_file():
        raise ExternalModelError(f"--checkpoint {path}: no such file; give the file of the model's weights "
                                 f"(torch.save(model.state_dict(), PATH))")
    try:
        if checksum_path(path).exists():  # a harness checkpoint: verified against its listed hash
            obj = load_checkpoint(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError as err:
        raise ExternalModelError(f"--checkpoint {err}") from None
    except Exception as err:
        raise ExternalModelError(f"--checkpoint {path} cannot be read as weights ({_brief(err)}); save "
                                 f"model.state_dict() with torch.save (a pickled model object is not loaded)") from None
    state = _state_dict_of(obj)
    if state is None:
        raise ExternalModelError(f"--checkpoint {path} holds no state dict (tensors by name, alone or under "
                                 f"'state_dict' or 'model'); save model.state_dict() with torch.save")
    own = model.state_dict()
    wrong = [f"{k} is {tuple(v.shape)} there, {tuple(own[k].shape)} in the model"
             for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:  # load_state_dict would stop with a traceback listing every tensor
        raise ExternalModelError(f"--checkpoint {path} does not fit the model {spec} builds: {len(wrong)} tensor(s) "
                                 f"of another shape ({'; '.join(wrong[:3])}{'; ...' if len(wrong) > 3 else ''}); "
                                 f"give the weights of this very architecture (same widths and classes)")
    result = model.load_state_dict(dict(state), strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"{len(result.missing_keys)} of the model's tensors are not in it "
                         f"({', '.join(result.missing_keys[:3])}{'...' if len(result.missing_keys) > 3 else ''})")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} of its tensors are not the model's "
                         f"({', '.join(result.unexpected_keys[:3])}{'...' if len(result.unexpected_keys) > 3 else ''})")
        raise ExternalModelError(f"--checkpoint {path} does not fit the model {spec} builds: {'; '.join(parts)}; "
                                 f"give the weights of this very architecture")
    return sha256_file(path)


def check_model(model: nn.Module, images: torch.Tensor, num_classes: int, dataset: str, spec: str) -> None:
    """One forward in eval mode on ``images`` (float, in [0, 1]): it must run
    and give finite logits of shape (N, num_classes)."""
    shape = tuple(images.shape)
    model.eval()
    try:
        with torch.no_grad():
            out = model(images)
    except Exception as err:
        raise ExternalModelError(f"--model {spec}: the model fails on a batch of {dataset} images, shape {shape}, "
                                 f"values in [0, 1] ({_brief(err)}); it must take such images") from None
    if not isinstance(out, torch.Tensor):
        raise ExternalModelError(f"--model {spec}: the model returns a {type(out).__name__}; it must return "
                                 f"a tensor of logits")
    want: Tuple[int, int] = (shape[0], num_classes)
    if tuple(out.shape) != want:
        raise ExternalModelError(f"--model {spec}: the model returns shape {tuple(out.shape)} for {shape[0]} "
                                 f"images; expected {want}, one logit for each of the {num_classes} classes of {dataset}")
    if not bool(torch.isfinite(out).all()):
        raise ExternalModelError(f"--model {spec}: the model returns NaN or infinite logits on {dataset} images; "
                                 f"check its weights")
