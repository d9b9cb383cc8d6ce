"""Every option of a fine-tuning job, as plain data (no torch: the CLI builds its flags
from this without importing torch)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ZooAdaptError

STRATEGIES = ("linear-probe", "finetune", "two-stage", "gradual")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant", "dann")
BN_POLICIES = ("train", "frozen")
ON_OFF = ("auto", "on", "off")
# Defaults that differ between plain fine-tuning and domain adaptation (docs/adaptation.md
# has the measurements behind the second set).
PLAIN_DEFAULTS = {"strategy": "two-stage", "schedule": "onecycle", "keep": "best"}
ADAPT_DEFAULTS = {"strategy": "finetune", "schedule": "dann", "keep": "last", "lr": 1e-2}


@dataclass
class FinetuneConfig:
    """Every option of a fine-tuning run (the CLI's flags, a config.toml's keys)."""

    backbone: str = "efficientnet_lite0"
    data: str | None = None  # ImageFolder root (train/ and val/ or test/), or one folder to split
    dataset: str | None = None  # a torchvision dataset by name (cifar10, cifar100, ...)
    data_dir: str = "data"  # where --dataset downloads to
    val_split: float = 0.2  # used when --data has no val/ folder
    out: str = "runs/finetune"
    strategy: str | None = None  # default: two-stage; finetune with --target-data
    epochs: int = 5  # in all, head-only epochs included
    head_epochs: int = 1  # two-stage: epochs that train the head alone
    unfreeze_every: int = 1  # gradual: epochs between unfreezing one more group
    lr: float | None = None  # head rate; default 2e-3 (adamw) or 2e-2 (sgd)
    lr_body: float | None = None  # stem rate, geometric spread up to lr; default lr/100
    lr_decay: float | None = None  # instead of lr_body: layer-wise decay per group
    weight_decay: float = 0.01
    batch_size: int = 32
    optimizer: str = "adamw"
    momentum: float = 0.9  # sgd
    schedule: str | None = None  # default: onecycle; dann with --target-data
    warmup: float = 0.1  # fraction of each stage's steps
    label_smoothing: float = 0.1
    image_size: int | None = None  # default: the backbone's input size
    hflip: bool = True  # random horizontal flips in training (and in TTA); off for digits, text
    crop_scale: float = 0.35  # smallest area fraction of the random resized crop
    bn: str = "train"  # BatchNorm in frozen groups: train (fastai's train_bn) or frozen
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    pretrained: bool = True
    weights: str | None = None  # a weights tag or a local weights file
    workers: int | None = None  # default: 0 on small CPUs, all cores but one on CUDA
    data_on_device: str = "auto"  # hold the decoded images on the device: auto | on | off
    compile: bool = False  # torch.compile the model (its compile time is reported apart)
    feature_cache: bool = True  # linear-probe: compute the frozen body's features once
    cache_views: int = 1  # feature cache: 1 = each image's eval view; N > 1: N augmented views
    keep: str | None = None  # exported epoch: best (source validation accuracy) or last; default
    # best, last with --target-data (source accuracy is a poor guide to target accuracy)
    tta: bool = True  # also report validation accuracy with test-time augmentation
    resume: bool = False
    # domain adaptation (any of these needs target_data)
    target_data: str | None = None  # unlabelled target images, any depth; labels never read
    target_val: str | None = None  # labelled target ImageFolder, for reporting (an oracle figure)
    adapt: str = "dann"  # adaptation method (zoo-adapt methods)
    adapt_weight: float = 1.0  # final weight of the method's loss (DANN: the lambda it rises to)
    adapt_gamma: float = 10.0  # DANN: how fast lambda rises, 2/(1+exp(-gamma p)) - 1
    domain_hidden: str = "1024,1024"  # DANN: hidden sizes of the domain classifier
    domain_dropout: float = 0.5  # DANN: dropout in the domain classifier
    adapt_options: dict[str, Any] = field(default_factory=dict)  # further method options
    steps_per_epoch: int | None = None  # with --target-data; default: max of the two loaders
    select_with_target_labels: bool = False  # keep the epoch best on --target-val (uses target labels!)

    def __post_init__(self) -> None:
        adapting = bool(self.target_data)
        defaults = ADAPT_DEFAULTS if adapting else PLAIN_DEFAULTS
        for key, value in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if adapting and self.lr_body is None and self.lr_decay is None:
            self.lr_body = self.head_lr / 10  # docs/adaptation.md: lr/100 leaves DANN no room

    def validate(self) -> "FinetuneConfig":
        choices = {"strategy": STRATEGIES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
                   "bn": BN_POLICIES, "keep": ("best", "last"), "precision": ("auto", "bf16", "fp32"),
                   "data_on_device": ON_OFF}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ZooAdaptError(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                    f"not {getattr(self, key)!r}")
        for key in ("epochs", "batch_size", "unfreeze_every", "cache_views"):
            if getattr(self, key) < 1:
                raise ZooAdaptError(f"--{key.replace('_', '-')} must be at least 1")
        if not 0 < self.crop_scale <= 1:
            raise ZooAdaptError(f"--crop-scale must be in (0, 1], not {self.crop_scale}")
        if self.head_epochs < 0:
            raise ZooAdaptError("--head-epochs must not be negative")
        if self.lr_body is not None and self.lr_decay is not None:
            raise ZooAdaptError("give --lr-body or --lr-decay, not both")
        if self.data and self.dataset:
            raise ZooAdaptError("give --data or --dataset, not both")
        if not self.target_data:
            for key in ("target_val", "select_with_target_labels", "steps_per_epoch"):
                if getattr(self, key):
                    raise ZooAdaptError(f"--{key.replace('_', '-')} needs --target-data")
        if self.select_with_target_labels and not self.target_val:
            raise ZooAdaptError("--select-with-target-labels needs --target-val")
        self.hidden_sizes()
        return self

    def hidden_sizes(self) -> list[int]:
        try:
            sizes = [int(x) for x in str(self.domain_hidden).split(",") if x.strip()]
        except ValueError:
            sizes = [0]
        if any(x < 1 for x in sizes):
            raise ZooAdaptError(f"--domain-hidden takes comma-separated sizes, not {self.domain_hidden!r}")
        return sizes

    @property
    def head_lr(self) -> float:
        return self.lr if self.lr is not None else (2e-2 if self.optimizer == "sgd" else 2e-3)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "config") -> "FinetuneConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        normalised = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(normalised) - known)
        if unknown:
            raise ZooAdaptError(f"{origin}: unknown option {unknown[0]!r}")
        return cls(**normalised)
