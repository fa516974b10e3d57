"""Driver for tests/test_scaleout_ddp.py, run under torchrun (Gloo, CPU):
trains every method x augmentation x batch split data-parallel and, on rank
0, a one-process replica of each in lockstep, and writes what it compared
after every minibatch to the JSON file named by its first argument.

    torchrun --nproc_per_node=2 tests/ddp_lockstep.py OUT.json

Per combination (rank 0's view):
- ``data_equal``: every rank's slice equals the replica's batch rows
  (images and labels, bitwise), so shuffling, crop and flip draws and the
  split are those of one process;
- ``weight_diff``: the largest parameter difference after each minibatch;
- ``delta_diff`` (free AT): the largest difference of the whole perturbation
  buffer after each minibatch, which every rank must hold after the gather;
- ``steps``: minibatches trained (a skipped one would show here).
"""
import contextlib
import json
import sys

import torch

from robustbench_convnorm import distributed
from robustbench_convnorm.config import config_from_dict
from robustbench_convnorm.data import DeviceBatches
from robustbench_convnorm.models import build_model
from robustbench_convnorm.normalizers import get_normalizer
from robustbench_convnorm.training.loop import make_optimizer
from robustbench_convnorm.training.methods import METHODS
from robustbench_convnorm.training.schedules import make_scheduler

METHOD_NAMES = ("natural", "free", "fgsm_rs")
AUGMENTS = {"none": (0, False), "crop": (1, False), "flip": (0, True), "crop_flip": (1, True)}
#: 48 examples: batch 16 divides it; batch 20 leaves an odd last batch of 8 (split 4/4 over two
#: ranks), batch 13 one of 9 (split 5/4, uneven) and batch 47 one of a single example, fewer
#: than the ranks (rank 1 trains a stand-in at weight 0)
SPLITS = {"divides": 16, "odd_last": 20, "uneven_last": 13, "tiny_last": 47}
N_TRAIN, SIZE, CLASSES = 48, 6, 3
EPOCHS = 2


def tiny_config(method: str, batch_size: int, crop: int, flip: bool):
    return config_from_dict({
        "data": {"source": "synthetic", "augment": {"crop_padding": crop, "flip": flip}},
        "model": {"arch": "convnet", "width": 0.25},
        "normalizers": [{"name": "vanilla"}],
        "train": {"method": method, "epochs": EPOCHS, "batch_size": batch_size, "lr": 0.05,
                  "schedule": "cosine", "eps": 8 / 255, "replays": 2, "val_examples": 0},
        "eval": {"evaluators": [{"type": "clean"}]},
        "seeds": [0], "device": "cpu"})


def build(cfg, data_x, data_y, ddp: bool):
    tc = cfg.train
    torch.manual_seed(0)
    model = build_model("convnet", get_normalizer("vanilla"), num_classes=CLASSES, in_channels=3,
                        mean=[0.5] * 3, std=[0.25] * 3, batchnorm=False, width=0.25)
    batches = DeviceBatches(data_x, data_y, tc.batch_size, shuffle=True, seed=0,
                            crop_padding=cfg.data.augment.crop_padding, flip=cfg.data.augment.flip)
    forward = distributed.wrap_model(model, None, lambda *_: None) if ddp else None
    optimizer = make_optimizer(model, tc)
    cls = METHODS.get(tc.method)
    scheduler = make_scheduler(optimizer, tc, len(batches) * cls.optimizer_steps_per_batch(tc))
    method = cls(tc, model, optimizer, scheduler, lambda: torch.zeros(()), contextlib.nullcontext,
                 torch.device("cpu"), forward=forward)
    method.generator.manual_seed(0)
    return model, method, batches


def compare(cfg, data_x, data_y, rank: int):
    model, method, batches = build(cfg, data_x, data_y, ddp=True)
    replica = build(cfg, data_x, data_y, ddp=False) if rank == 0 else None
    out = {"data_equal": True, "weight_diff": [], "delta_diff": [], "steps": 0}
    for _ in range(EPOCHS):
        one = iter(replica[2]) if replica else None
        for x, y in distributed.shard_batches(batches, method):
            lo, hi = method.shard.lo, method.shard.hi
            method.train_batch(x, y)
            out["steps"] += 1
            if replica is None:
                continue
            rx, ry = next(one)
            out["data_equal"] &= torch.equal(x, rx[lo:hi]) and torch.equal(y, ry[lo:hi])
            replica[1].train_batch(rx, ry)
            out["weight_diff"].append(max((p - q).abs().max().item()
                                          for p, q in zip(model.parameters(), replica[0].parameters())))
            if getattr(method, "delta", None) is not None:
                out["delta_diff"].append((method.delta - replica[1].delta).abs().max().item())
    return out


def main(path: str) -> None:
    torch.set_num_threads(1)
    ctx = distributed.setup(torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    data_x = torch.randint(0, 256, (N_TRAIN, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    data_y = torch.randint(0, CLASSES, (N_TRAIN,), generator=g)
    results = {}
    for method in METHOD_NAMES:
        for aug, (crop, flip) in AUGMENTS.items():
            for split, batch in SPLITS.items():
                results[f"{method}/{aug}/{split}"] = compare(tiny_config(method, batch, crop, flip),
                                                             data_x, data_y, ctx.rank)
    if ctx.rank == 0:
        with open(path, "w") as f:
            json.dump({"world_size": ctx.world_size, "results": results}, f)
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1])
