"""Every trained model out: ``robustbench_convnorm.load_model``.

    from robustbench_convnorm import load_model
    model = load_model("results/quickstart/runs/digits-convnet-sn-free-s0-1a2b3c4d")
    model = load_model("digits-convnet-sn-free-s0-1a2b3c4d", results_dir="results/quickstart")
    model = load_model("results/quickstart/runs/<run_id>/checkpoint.pt")

The model comes back in eval mode on ``device``, taking float images in [0, 1]
(its input normalization is inside it) and returning logits, as torchattacks'
attacks and RobustBench's ``benchmark`` expect. Integer images (the harness's
data sets hold uint8 ones, ``data.test_x``) are refused with a TypeError that
names the conversion (``to_float(x)``, i.e. ``x.float() / 255``): fed as they are,
0..255 values give a silently wrong accuracy. It is rebuilt from the run
configuration saved in the checkpoint, whose SHA-256 is checked first
(checkpoints.load_model).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .checkpoints import CheckpointError
from .registry import closest

__all__ = ["load_model", "find_checkpoint", "ModelNotFound", "refuse_integer_images"]

CHECKPOINT = "checkpoint.pt"  # training/loop.py's name, without importing the training code
PathLike = Union[str, Path]


class ModelNotFound(FileNotFoundError):
    """``load_model`` was given something that leads to no checkpoint; the
    message says what was found instead and what to give."""


def find_checkpoint(run: PathLike, results_dir: Optional[PathLike] = None) -> Path:
    """The checkpoint a run names: a checkpoint file, a run directory, or a
    run id (within ``results_dir``/runs)."""
    path = Path(run)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / CHECKPOINT).is_file():
            return path / CHECKPOINT
        if (path / "runs").is_dir():
            raise ModelNotFound(f"{path} is a results directory, not a run: give one run of it, "
                                f"load_model(RUN_ID, results_dir={str(path)!r}) or {path}/runs/RUN_ID")
        if (path / "record.json").is_file():
            raise ModelNotFound(f"{path} is a run without {CHECKPOINT} (it has not finished an epoch, or the "
                                f"checkpoint was moved); train it, or give another run")
        raise ModelNotFound(f"{path} is a directory but not a run directory (no {CHECKPOINT} in it)")
    if results_dir is None:
        raise ModelNotFound(f"{run}: no such file or directory; give a run directory, a checkpoint path, or a run "
                            f"id with results_dir=")
    runs = Path(results_dir) / "runs"
    if not runs.is_dir():
        raise ModelNotFound(f"results_dir {results_dir} holds no runs/ folder; give the output_dir of a config")
    candidate = runs / str(run)
    if (candidate / CHECKPOINT).is_file():
        return candidate / CHECKPOINT
    if candidate.is_dir():
        raise ModelNotFound(f"run {run} in {results_dir} has no {CHECKPOINT} (it has not finished an epoch)")
    known = sorted(p.name for p in runs.iterdir() if p.is_dir())
    raise ModelNotFound(f"no run {run!r} in {runs}{closest(str(run), known)}; it holds {len(known)} run(s)"
                        + (f", e.g. {known[0]}" if known else ""))


def refuse_integer_images(module: nn.Module, args) -> None:
    """Forward pre-hook: integer images (uint8 0..255) are not the [0, 1] floats the model takes."""
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"the model takes float images in [0, 1], got a {x.dtype} tensor of shape {tuple(x.shape)}; "
                        f"convert it first: robustbench_convnorm.data.to_float(x) (x.float() / 255 for uint8 "
                        f"images such as the harness's data.test_x)")


def load_model(run: PathLike, results_dir: Optional[PathLike] = None, *, device="cpu") -> nn.Module:
    """The trained model of a run, in eval mode on ``device``, taking inputs in [0, 1].

    Args:
        run: a run directory (``<output_dir>/runs/<run_id>``), a checkpoint
            path (``.../checkpoint.pt`` or ``checkpoint.prev.pt``), or a run
            id, looked up in ``results_dir``.
        results_dir: the config's ``output_dir``, where a run id is looked up.
        device: where the model goes ("cpu", "cuda", a torch.device).

    Returns:
        The ``nn.Module``; its run configuration (a dict) is in ``model.run_config``.

    Raises:
        ModelNotFound: ``run`` leads to no checkpoint (the message says why).
        CheckpointError: the checkpoint fails its SHA-256 check, or is not a
            training checkpoint of this harness.

    The model raises TypeError when called on integer images (uint8 0..255):
    convert them with ``robustbench_convnorm.data.to_float``.

    Example (torchattacks on a trained model)::

        import torchattacks
        model = load_model(run_dir)
        x_adv = torchattacks.PGD(model, eps=8/255, alpha=2/255, steps=10)(x, y)   # x in [0, 1]
    """
    from .checkpoints import load_model as rebuild

    path = find_checkpoint(run, results_dir)
    try:
        model, run_config = rebuild(path, device=device)
    except KeyError as err:  # a sound file that is not a training checkpoint of this harness
        raise CheckpointError(f"{path} is not a training checkpoint of this harness (it has no {err}); "
                              f"give a checkpoint.pt written by a run") from None
    model.run_config = run_config
    model.register_forward_pre_hook(refuse_integer_images)
    return model.eval()
