"""The config's sections as typed dataclasses: every key, its type, default,
allowed range and a line of documentation (``--list`` and the README's
config reference read them)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


class ConfigError(ValueError):
    """A config problem; the message names the file, the key and the fix."""


class ConfigWarning(UserWarning):
    """A value that is allowed but probably not meant (eps >= 0.5)."""


#: seeds go to torch's 64-bit generators and the tables' int64 columns
MAX_SEED = 2 ** 63 - 1


def _opt(default=dataclasses.MISSING, *, choices=None, min=None, max=None, min_exclusive=False,
         factory=None, doc=""):
    meta = {"choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------- sections

@dataclass
class AugmentConfig:
    crop_padding: int = _opt(4, min=0, doc="random crop with this much zero padding (0: off)")
    flip: bool = _opt(True, doc="random horizontal flip")


@dataclass
class DataConfig:
    source: str = _opt("digits", doc="data source: cifar10, cifar100, imagefolder, digits, synthetic")
    root: Optional[str] = _opt(None, doc="directory (or .zip for imagefolder) holding the data")
    download: bool = _opt(True, doc="cifar: try torchvision's download when files are missing")
    options: Dict[str, Any] = _opt(factory=dict, doc="source-specific options")
    train_fraction: float = _opt(1.0, min=0.0, max=1.0, min_exclusive=True,
                                 doc="use this fraction of the training set (class-stratified)")
    label_noise: float = _opt(0.0, min=0.0, max=1.0, doc="symmetric label noise rate on train")
    val_size: int = _opt(0, min=0, doc="examples carved from train as a validation split")
    augment: AugmentConfig = _opt(factory=AugmentConfig)


@dataclass
class ModelConfig:
    arch: str = _opt("convnet", doc="resnet18, vgg16, convnet, lipconvnet, preact_resnet18 or wide_resnet")
    width: float = _opt(1.0, min=0.0, min_exclusive=True, doc="channel width multiplier")
    options: Dict[str, Any] = _opt(factory=dict, doc="the architecture's options (--list), e.g. lipconvnet: "
                                                     "{size: xs, stages: 3, activation: maxmin}")


@dataclass
class NormalizerEntry:
    name: str = _opt(doc="a registered normalizer")
    options: Dict[str, Any] = _opt(factory=dict, doc="the normalizer's options")
    overrides: Dict[str, Any] = _opt(factory=dict,
                                     doc="config overrides for this normalizer, e.g. {train.lr: 0.01}")
    label: Optional[str] = _opt(None, doc="display name (default: name)")


@dataclass
class TrainConfig:
    method: str = _opt("natural", choices=["natural", "free", "fgsm_rs", "pgd", "trades"],
                       doc="pgd: Madry et al. PGD-AT; trades: Zhang et al. (README, Training)")
    epochs: int = _opt(10, min=0, doc="free AT: each epoch replays every minibatch `replays` times")
    budget: Optional[str] = _opt(None, doc="train for a wall-clock time ('30m', '2h') or optimizer steps "
                                           "('5000 steps') instead of `epochs`: the epochs it buys are "
                                           "fixed before training (README, Training budgets)")
    batch_size: int = _opt(128, min=1)
    lr: float = _opt(0.1, min=0.0, min_exclusive=True)
    momentum: float = _opt(0.9, min=0.0, max=1.0)
    weight_decay: float = _opt(5e-4, min=0.0)
    nesterov: bool = _opt(False)
    schedule: str = _opt("multistep", choices=["constant", "multistep", "cosine", "cyclic"])
    milestones: List[int] = _opt(factory=list, doc="multistep: epochs at which lr *= gamma")
    gamma: float = _opt(0.1, min=0.0, min_exclusive=True)
    warmup_fraction: float = _opt(0.4, min=0.0, max=1.0,
                                  doc="cyclic: fraction of training spent rising to lr")
    eps: float = _opt(8 / 255, min=0.0, doc="L_inf radius of the training perturbation")
    step: Optional[float] = _opt(None, min=0.0,
                                 doc="perturbation step (default: eps for free, 1.25 eps for fgsm_rs, "
                                     "2.5 eps / attack_steps for pgd and trades)")
    replays: int = _opt(4, min=1, doc="free AT: m, replays of each minibatch")
    attack_steps: int = _opt(10, min=1, doc="pgd, trades: attack steps per minibatch")
    trades_beta: float = _opt(6.0, min=0.0, doc="trades: weight of the KL term (the paper's 1/lambda)")
    reset_delta: bool = _opt(False, doc="free AT: zero delta for each minibatch (ConvNorm code)")
    amp: str = _opt("auto", choices=["auto", "off", "bf16"],
                    doc="bf16 autocast (FFTs always fp32); auto: where measured faster (speed.AMP_AUTO)")
    val_pgd_steps: int = _opt(10, min=0, doc="PGD steps for the per-epoch validation check (0: off)")
    val_examples: int = _opt(256, min=0, doc="fixed validation subset size checked each epoch (0: off)")
    checkpoint_every: int = _opt(1, min=1, doc="epochs between checkpoints")
    select: str = _opt("last", choices=["last", "best_val_pgd"],
                       doc="weights evaluated: the last epoch's, or the epoch's with the best validation PGD "
                           "accuracy (needs val_examples and val_pgd_steps > 0)")
    ema: Optional[float] = _opt(None, min=0.0, max=1.0, min_exclusive=True,
                                doc="exponential moving average of the weights with this decay per optimizer "
                                    "step (e.g. 0.999), evaluated instead of the raw weights (null: off)")
    loss: str = _opt("cross_entropy", choices=["cross_entropy", "offset_cross_entropy"],
                     doc="offset_cross_entropy: CE on logits with sqrt(2)*loss_margin taken off the true class, "
                         "at loss_temperature (1-Lipschitz training, training/losses.py)")
    loss_margin: float = _opt(36 / 255, min=0.0, doc="offset_cross_entropy: the L2 radius m (offset sqrt(2) m)")
    loss_temperature: float = _opt(0.25, min=0.0, min_exclusive=True, doc="offset_cross_entropy: temperature")
    stop_after_epochs: Optional[int] = _opt(None, min=0,
                                            doc="stop (resumably) after this many epochs in this process")


@dataclass
class EvalConfig:
    n_examples: Optional[int] = _opt(None, min=1, doc="test examples to evaluate (null: all)")
    batch_size: int = _opt(256, min=1)
    seed: int = _opt(0, min=0, max=MAX_SEED, doc="fixes which examples are evaluated and the attacks' randomness")
    checks: bool = _opt(True, doc="run the sanity checks (docs/evaluators.md) that produce flags")
    lipschitz: bool = _opt(True, doc="record per-layer spectral norms and bounds")
    alpha: float = _opt(0.01, min=0.0, max=1.0, min_exclusive=True,
                        doc="significance level of the paired sanity comparisons (docs/evaluators.md)")
    threat_model: Optional[Dict[str, Any]] = _opt(None, doc="{eps, norm} of the threat model for worst_case_acc "
                                                             "(null: the white-box evaluators' commonest eps)")
    evaluators: List[Dict[str, Any]] = _opt(factory=lambda: [{"type": "clean"}],
                                            doc="list of {type: ..., options...}")


_SWITCH = ["auto", "on", "off"]


@dataclass
class SpeedConfig:
    """Fast-path switches (robustbench_convnorm/speed.py): how a run computes,
    never what; not part of the run id. auto = on where measured faster and
    matching on this device type (docs/benchmarks.md)."""
    channels_last: str = _opt("auto", choices=_SWITCH, doc="channels_last memory format for model and inputs")
    cudnn_benchmark: str = _opt("auto", choices=_SWITCH, doc="cudnn.benchmark autotuning (CUDA only)")
    optimizer: str = _opt("auto", choices=["auto", "for_loop", "foreach", "fused"],
                          doc="SGD kernel: per-parameter loop, multi-tensor foreach, or fused")
    compile: str = _opt("auto", choices=_SWITCH,
                        doc="torch.compile the model (FFT layers stay eager; falls back to eager on failure)")
    convnorm_fast: str = _opt("auto", choices=_SWITCH, doc="ConvNorm's fast Fourier filtering")


@dataclass
class LoggingConfig:
    """Where a run's logs go besides run.log and train_log.csv; not part of the run id."""
    tensorboard: bool = _opt(False, doc="also write TensorBoard event files to runs/<id>/tensorboard/ (per-epoch "
                                        "scalars, per-evaluator results); needs the tensorboard package")


@dataclass
class Config:
    data: DataConfig = _opt(factory=DataConfig)
    model: ModelConfig = _opt(factory=ModelConfig)
    normalizers: List[NormalizerEntry] = _opt(factory=lambda: [NormalizerEntry(name="vanilla")])
    batchnorm: bool = _opt(False, doc="BatchNorm after each conv")
    train: TrainConfig = _opt(factory=TrainConfig)
    eval: EvalConfig = _opt(factory=EvalConfig)
    seeds: List[int] = _opt(factory=lambda: [0])
    device: str = _opt("auto", choices=["auto", "cpu", "cuda"])
    speed: SpeedConfig = _opt(factory=SpeedConfig)
    output_dir: str = _opt("results/default")
    grid: Dict[str, List[Any]] = _opt(factory=dict,
                                      doc="extra grid axes: {dotted.key: [values]}")
    name: Optional[str] = _opt(None, doc="experiment name (for humans)")
    threads: Optional[int] = _opt(None, min=1, doc="torch CPU threads, set at each run's start (null: "
                                                   "torch's default); CPU results' last digits depend on it")
    reproducible: str = _opt("off", choices=["off", "avx2", "strict"],
                             doc="pin the CPU's kernel paths (ATen, MKL, oneDNN) so that results do not depend on "
                                 "the CPU model (robustbench_convnorm/reproducible.py); not part of the run id")
    logging: LoggingConfig = _opt(factory=LoggingConfig)
    launcher: Dict[str, Any] = _opt(factory=dict,
                                    doc="how the grid is launched (SLURM, local workers, DDP; launch/options.py)")
