"""The training loop shared by every method: epochs, per-epoch logging and
validation, progress within an epoch (progress.track_epoch), atomic
checkpoints, exact resume, failure on a non-finite loss."""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import os
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from .. import atomic, distributed, tensorboard
from ..checkpoints import check_run_config, restore_rng_states, rng_states, save_checkpoint
from ..config import to_dict
from ..data import DeviceBatches, to_float
from ..progress import epoch_done, grid_eta_suffix, track_epoch
from ..speed import make_sgd, uses_bf16
from .budget import Plan, parse_budget, plan_epochs
from .ema import WeightEMA
from .methods import METHODS
from .overfitting import BestValPGD, overfitting_flags
from .schedules import make_scheduler

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.csv"
LOG_COLUMNS = ["epoch", "loss", "train_acc", "lr", "seconds", "images_per_second",
               "val_clean_acc", "val_pgd_acc", "val_source"]
#: Test hook: SIGKILL the process right after this epoch's checkpoint, to
#: prove that a killed run resumes to the same result.
KILL_AFTER_EPOCH_ENV = "ROBUSTBENCH_CONVNORM_KILL_AFTER_EPOCH"


@dataclass
class TrainResult:
    status: str                      # finished | failed | interrupted | stopped
    epochs_done: int
    train_seconds: float
    log: List[Dict[str, Any]] = field(default_factory=list)
    error: Optional[Dict[str, Any]] = None
    checkpoint_epoch: int = 0        # the epoch whose checkpoint is on disk (0: none)
    notes: List[str] = field(default_factory=list)  # checkpoints set aside or fallen back from
    plan: Optional[Plan] = None      # what train.budget bought (None: train.epochs)
    flags: List[str] = field(default_factory=list)  # train:catastrophic_overfit, train:robust_overfit
    training: Dict[str, Any] = field(default_factory=dict)  # the record's "training": selection, EMA, overfitting

    @property
    def seconds_per_epoch(self) -> Optional[float]:
        return self.train_seconds / self.epochs_done if self.epochs_done else None


def autocast_for(amp: str, device: torch.device) -> Callable:
    """bf16 autocast (FFT-based layers keep their FFTs in fp32) when asked
    for, or under ``auto`` where it was measured faster (speed.AMP_AUTO)."""
    if uses_bf16(amp, device):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def make_optimizer(model, train_cfg, impl: str = "for_loop"):
    return make_sgd(model.parameters(), lr=train_cfg.lr, momentum=train_cfg.momentum,
                    weight_decay=train_cfg.weight_decay, nesterov=train_cfg.nesterov, impl=impl)


def validation_subset(data, n: int, seed: int, device):
    """A fixed subset: the validation split when there is one, else training
    images (unaugmented); the source is logged."""
    if n <= 0:
        return None
    if data.val_x is not None:
        x, y, source = data.val_x, data.val_y, "val"
    else:
        x, y, source = data.train_x, data.train_y, "train-subset"
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    return to_float(x[idx].to(device)), y[idx].to(device), source


def validate(model, subset, train_cfg, batch_size: int):
    """Clean and PGD accuracy (%) on the fixed subset; catches catastrophic overfitting."""
    import torchattacks

    if subset is None:
        return None, None, ""
    x, y, source = subset
    was_training = model.training
    model.eval()
    clean = robust = 0
    eps = train_cfg.eps if train_cfg.eps > 0 else 8 / 255
    pgd = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / max(train_cfg.val_pgd_steps, 1),
                           steps=train_cfg.val_pgd_steps, random_start=True) if train_cfg.val_pgd_steps else None
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with torch.no_grad():
            clean += (model(xb).argmax(1) == yb).sum()
        if pgd is not None:
            adv = pgd(xb, yb)
            with torch.no_grad():
                robust += (model(adv).argmax(1) == yb).sum()
    model.train(was_training)
    n = len(y)
    return (100.0 * float(clean) / n,
            100.0 * float(robust) / n if pgd is not None else None, source)


#: A time budget's warm-up: untimed batches (caches, allocator, first-call
#: costs), then timed ones; a validation pass is timed once on top.
WARMUP_BATCHES, TIMED_BATCHES = 2, 4


def measure_epoch_seconds(model, train_x, train_y, cfg, tc, device, optimizer_impl: str, n_batches: int,
                          subset) -> float:
    """Seconds one epoch of ``tc``'s method is estimated to take here, measured
    on a copy of ``model`` with its own optimizer, batches and generator; every
    RNG state is put back, so the run itself trains exactly as without it."""
    states = rng_states(device)
    try:
        probe = copy.deepcopy(model)
        probe.train()
        optimizer = make_optimizer(probe, tc, optimizer_impl)
        method_cls = METHODS.get(tc.method)
        scheduler = make_scheduler(optimizer, tc, n_batches * method_cls.optimizer_steps_per_batch(tc))
        method = method_cls(tc, probe, optimizer, scheduler, lambda: probe.normalizer.penalty(probe),
                            autocast_for(tc.amp, device), device)
        batches = DeviceBatches(train_x, train_y, tc.batch_size, shuffle=True,
                                crop_padding=cfg.data.augment.crop_padding, flip=cfg.data.augment.flip, seed=0)
        pending = []
        while len(pending) < WARMUP_BATCHES + TIMED_BATCHES:
            pending.extend(list(batches)[:WARMUP_BATCHES + TIMED_BATCHES - len(pending)])
        for x, y in pending[:WARMUP_BATCHES]:
            method.train_batch(x, y)
        _sync(device)
        t0 = time.perf_counter()
        for x, y in pending[WARMUP_BATCHES:]:
            method.train_batch(x, y)
        _sync(device)
        per_batch = (time.perf_counter() - t0) / TIMED_BATCHES
        t0 = time.perf_counter()
        validate(probe, subset, tc, max(tc.batch_size, 256))
        return per_batch * n_batches + (time.perf_counter() - t0)
    finally:
        restore_rng_states(states, device)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_log(run_dir: Path, rows: List[Dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS)
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in LOG_COLUMNS})
    atomic.write_text(run_dir / TRAIN_LOG, buf.getvalue())


def train_run(spec, model, data, meta, device, run_dir, *, resume=True, log=print, forward=None,
              optimizer_impl: str = "for_loop", guard: Optional[Callable[[], None]] = None) -> TrainResult:
    """Train ``model`` as ``spec`` says, resuming from the newest good checkpoint
    in ``run_dir`` (checkpoints.load_latest). ``forward`` computes the model's
    output (default: the model itself; the fast path may pass a compiled
    one); ``optimizer_impl`` picks SGD's kernel; ``guard()`` runs before every
    write to ``run_dir`` and raises to stop a worker that lost the run's lock."""
    guard = guard or (lambda: None)
    cfg = spec.config
    tc = cfg.train
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    batches = DeviceBatches(train_x, train_y, tc.batch_size, shuffle=True,
                            crop_padding=cfg.data.augment.crop_padding, flip=cfg.data.augment.flip,
                            seed=spec.seed)
    if len(batches) == 0:
        raise ValueError(f"no training batches: {len(train_y)} examples; lower train.batch_size")
    method_cls = METHODS.get(tc.method)
    steps_per_epoch = len(batches) * method_cls.optimizer_steps_per_batch(tc)
    subset = validation_subset(data, tc.val_examples, spec.seed, device)
    # robust overfitting's remedies (training/overfitting.py, training/ema.py): off unless the config asks
    if tc.select == "best_val_pgd" and (subset is None or not tc.val_pgd_steps):
        raise ValueError("train.select: best_val_pgd needs the per-epoch validation PGD: set train.val_examples "
                         "and train.val_pgd_steps above 0, or train.select: last")

    rows: List[Dict[str, Any]] = []
    start_epoch, train_seconds = 0, 0.0
    ckpt_path = run_dir / CHECKPOINT
    ckpt, notes = None, []
    if resume:
        # rank 0 picks the newest good checkpoint (setting damaged ones aside); under DDP
        # every rank loads the one it picked
        ckpt, used, notes = distributed.load_latest(ckpt_path, map_location=device, log=log)
        if ckpt is not None:
            check_run_config(ckpt, cfg, used)
    plan = None
    if tc.budget is not None:
        # fixed once, before the first epoch: a resumed run keeps its checkpoint's plan
        if ckpt is not None and ckpt.get("plan"):
            plan = Plan.from_dict(ckpt["plan"])
        else:
            plan = distributed.agree(plan_epochs(
                parse_budget(tc.budget), steps_per_epoch,
                lambda: measure_epoch_seconds(model, train_x, train_y, cfg, tc, device, optimizer_impl,
                                              len(batches), subset), WARMUP_BATCHES + TIMED_BATCHES))
            log(f"  budget {plan.budget}: {plan.epochs} epoch(s)" + (
                f" at an estimated {plan.estimated_epoch_seconds:.1f} s each (load average "
                f"{plan.load_average})" if plan.kind == "time" else
                f" of {plan.steps_per_epoch} optimizer steps"))
        tc = replace(tc, epochs=plan.epochs)
    forward = distributed.wrap_model(model, forward, log)  # DDP under torchrun, else unchanged
    optimizer = make_optimizer(model, tc, optimizer_impl)
    scheduler = make_scheduler(optimizer, tc, steps_per_epoch)
    normalizer = model.normalizer
    method = method_cls(tc, model, optimizer, scheduler, lambda: normalizer.penalty(model),
                        autocast_for(tc.amp, device), device, forward=forward)
    method.generator.manual_seed(spec.seed)
    ema = WeightEMA(model, tc.ema) if tc.ema is not None else None
    if ema is not None:
        ema.attach(optimizer)
    best = BestValPGD() if tc.select == "best_val_pgd" else None
    evaluated_weights = ema.applied if ema is not None else contextlib.nullcontext
    board = tensorboard.open_writer(cfg, run_dir)  # logging.tensorboard: per-epoch scalars (None when off)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        method.load_state_dict(ckpt["method"])
        batches.set_state(ckpt["batches_rng"])
        restore_rng_states(ckpt["rng"], device)
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        if best is not None:
            best.load_state_dict(ckpt["best"])
        start_epoch, train_seconds, rows = ckpt["epoch"], ckpt["train_seconds"], list(ckpt["log"])
        log(f"  resuming from epoch {start_epoch}/{tc.epochs} ({used})")
    saved_epoch = start_epoch  # whose checkpoint is on disk: what Ctrl-C or a NaN leaves to resume from

    def checkpoint(epoch: int, finished: bool, last_model=None):
        nonlocal saved_epoch
        save_checkpoint({
            "format": 1, "epoch": epoch, "finished": finished, "model": model.state_dict(),
            # the remedies' state; a finished checkpoint's model is the evaluated weights, last_model the last epoch's
            "ema": ema.state_dict() if ema is not None else None,
            "best": best.state_dict() if best is not None else None, "last_model": last_model,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "method": method.state_dict(), "batches_rng": batches.state(), "rng": rng_states(device),
            "log": rows, "train_seconds": train_seconds, "run_config": to_dict(cfg), "model_meta": meta,
            "plan": plan.as_dict() if plan is not None else None,
        }, ckpt_path, guard=guard)
        saved_epoch = epoch

    def result(status, done, error=None):
        if board is not None:
            board.close()
        flags, details = overfitting_flags(rows, len(subset[1]) if subset is not None else 0)
        training = {"select": tc.select, "ema": tc.ema, "overfitting": details,
                    "selected_epoch": (best.epoch if best is not None else done) if status == "finished" else None,
                    "selected_val_pgd_acc": best.acc if best is not None else None}
        return TrainResult(status, done, train_seconds, rows, error, saved_epoch, notes, plan, flags, training)

    if start_epoch >= tc.epochs:
        if not ckpt_path.exists():
            checkpoint(start_epoch, True)
        return result("finished", start_epoch)
    epochs_this_process = 0
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, tc.epochs):
            model.train()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            shards = distributed.shard_batches(batches, method)
            for x, y in track_epoch(shards, len(shards), f"  epoch {epoch + 1}/{tc.epochs}", log):
                l, c, n = method.train_batch(x, y)
                loss_sum, correct, seen = loss_sum + l, correct + c, seen + n
            loss_sum, correct, seen = distributed.sum_over_ranks(loss_sum, correct, seen)
            lr = optimizer.param_groups[0]["lr"]
            loss = float(loss_sum) / seen      # the one host synchronisation of the epoch
            seconds = time.perf_counter() - t0
            if not math.isfinite(loss):
                reason = (f"non-finite training loss ({loss}) in epoch {epoch + 1}; {_kept(saved_epoch)}. "
                          f"Lower train.lr or check the normalizer.")
                return result("failed", epoch, {"epoch": epoch + 1, "reason": reason})
            train_seconds += seconds
            with evaluated_weights():  # with train.ema, the averaged weights are the ones validated (and kept)
                val_clean, val_pgd, source = validate(model, subset, tc, max(tc.batch_size, 256))
                if best is not None:
                    best.observe(epoch + 1, val_pgd, model)
            row = {"epoch": epoch + 1, "loss": loss, "train_acc": 100.0 * float(correct) / seen, "lr": lr,
                   "seconds": seconds, "images_per_second": seen / seconds if seconds > 0 else None,
                   "val_clean_acc": val_clean, "val_pgd_acc": val_pgd, "val_source": source}
            rows.append(row)
            guard()
            write_log(run_dir, rows)
            tensorboard.log_epoch(board, row)
            epoch_done(time.perf_counter() - t0)  # the grid's time left (progress.py), validation included
            log("  epoch {epoch}/{total}: loss {loss:.4f}  train acc {acc:.2f}%  lr {lr:.4g}  {sec:.1f}s"
                .format(epoch=epoch + 1, total=tc.epochs, loss=loss, acc=row["train_acc"], lr=lr, sec=seconds)
                + (f"  val clean {val_clean:.1f}%" if val_clean is not None else "")
                + (f"  val pgd {val_pgd:.1f}%" if val_pgd is not None else "") + grid_eta_suffix())
            done = epoch + 1
            if done % tc.checkpoint_every == 0 or done == tc.epochs:
                last_model = _evaluated_weights(model, ema, best, log) if done == tc.epochs else None
                checkpoint(done, done == tc.epochs, last_model)
                if os.environ.get(KILL_AFTER_EPOCH_ENV) == str(done) and distributed.is_writer():
                    os.kill(os.getpid(), signal.SIGKILL)
            epochs_this_process += 1
            if tc.stop_after_epochs is not None and epochs_this_process >= tc.stop_after_epochs \
                    and done < tc.epochs:
                return result("stopped", done, {"epoch": done, "reason": f"stopped after {epochs_this_process} "
                                                 f"epoch(s) as train.stop_after_epochs asks; rerun to continue"})
    except KeyboardInterrupt:
        last = rows[-1]["epoch"] if rows else 0
        log(f"\n  interrupted in epoch {epoch + 1}; {_kept(saved_epoch)}: rerun the same command to continue")
        return result("interrupted", last, {"epoch": epoch + 1, "reason": "interrupted (Ctrl-C)",
                                            "checkpoint_epoch": saved_epoch})
    return result("finished", tc.epochs)


def _evaluated_weights(model, ema, best, log) -> Optional[Dict[str, Any]]:
    """At the end of training: load the weights to evaluate into ``model``
    (train.select's best epoch, else train.ema's averages) and return the last
    epoch's own weights (None when they are the evaluated ones)."""
    if ema is None and best is None:
        return None
    last = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best is not None and best.state is not None:
        model.load_state_dict(best.state)
        log(f"  evaluating the weights of epoch {best.epoch} (best validation PGD {best.acc:.1f}%"
            f"{', weight averages' if ema is not None else ''}; train.select: best_val_pgd)")
    elif ema is not None:
        ema.copy_to_model()
        log(f"  evaluating the weights' moving average (train.ema: {ema.decay})")
    return last


def _kept(saved_epoch: int) -> str:
    """What a stopped run resumes from (with checkpoint_every > 1 it may be
    older than the last epoch trained)."""
    if saved_epoch:
        return f"the checkpoint of epoch {saved_epoch} is kept and a rerun resumes from it"
    return "no checkpoint was written yet, so a rerun starts from epoch 0"
