"""Every option of a fine-tuning job, declared once: its type, default, range, help
text and what `--resume` may change. The CLI's flags, config files (`--config`,
a run's config.toml) and the Python API all go through `read_options` and
`FinetuneConfig.validate`, so a value is checked the same way wherever it comes from.
No torch here: the CLI builds its flags from this without importing torch."""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from zoo_adapt.errors import ZooAdaptError, quote
from zoo_adapt.model.recipes import BN_POLICIES, DEFAULT_LRS, OPTIMIZERS, SCHEDULES, SPREADS, STRATEGIES
from zoo_adapt.zoo.options import WORDS, check, closest

BN_STATISTICS = ("target", "mixed")
ON_OFF = ("auto", "on", "off")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
EXPORT_FORMATS = ("onnx",)
# Options that moved into the dann method's own declaration (plugins/adaptation.py).
MOVED = {
    "adapt_gamma": "--adapt-option gamma=...",
    "domain_hidden": "--adapt-option width=... depth=...",
    "domain_dropout": "--adapt-option dropout=...",
}
BALANCE = ("none", "sampler", "loss")
SELECT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "map")
# Defaults that differ between plain fine-tuning and domain adaptation (docs/adaptation.md
# has the measurements behind the second set).
PLAIN_DEFAULTS = {
    "strategy": "two-stage",
    "schedule": "onecycle",
    "keep": "best",
    "lr_spread": "geometric",
    "warmup": 0.1,
    "label_smoothing": 0.1,
    "hflip": True,
    "crop_scale": 0.35,
}
# Ganin et al.'s recipe at issue 11's rates (one body rate, no warm-up, plain cross-entropy, whole
# images), and BatchNorm statistics of the target images.
ADAPT_DEFAULTS = {
    "strategy": "finetune",
    "schedule": "dann",
    "keep": "last",
    "lr": 3e-3,
    "lr_spread": "flat",
    "warmup": 0.0,
    "label_smoothing": 0.0,
    "hflip": False,
    "crop_scale": 1.0,
    "target_bn": "target",
}


def opt(
    default: Any,
    help: str,
    *,
    flags: tuple[str, ...] = (),
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: tuple[str | int, ...] | None = None,
    resume: str = "fixed",
    adapting: bool = False,
    words: tuple[str, ...] = (),
) -> Any:
    """Declare an option. `low`/`high` bound numbers (`*_open`: the bound itself is not
    allowed); `resume`: 'fixed' (a resumed run must keep it), 'free' (how the run is
    executed, not what it computes) or 'extend' (epochs: more may be added); `adapting`:
    only meaningful with --target-data (left out of config.toml otherwise); `words`:
    texts a number option also takes (lr: auto)."""
    meta = dict(
        help=help,
        flags=flags,
        low=low,
        high=high,
        low_open=low_open,
        high_open=high_open,
        choices=choices,
        resume=resume,
        adapting=adapting,
        words=words,
    )
    if isinstance(default, (dict, list)):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class FinetuneConfig:
    """Every option of a fine-tuning run (the CLI's flags, a config.toml's keys)."""

    # what to train on
    backbone: str = opt(
        "efficientnet_lite0",
        "Backbone name (zoo-adapt list) or plugin/upstream, e.g. timm/convnext_tiny; auto: rank the "
        "backbones whose weights are here first (zoo-adapt rank) and fine-tune the recommendation.",
        flags=("-b", "--model"),
    )
    rank_from: str | None = opt(
        None, "With --backbone auto: take the recommendation of this rank.json (zoo-adapt rank) instead of ranking."
    )
    data: str | None = opt(
        None,
        "ImageFolder root with train/ and val/ (or test/), or one folder to split. Leave "
        "out --data and --dataset for the embedded demo.",
    )
    dataset: str | None = opt(
        None,
        "A torchvision dataset: cifar10, cifar100, mnist, fashion-mnist, svhn, stl10, "
        "flowers102, food101, oxford-pets, dtd.",
    )
    data_dir: str = opt("data", "Where --dataset is downloaded to.")
    val_split: float | None = opt(
        None,
        "Fraction held out (stratified, seeded) when --data has no val/ folder; 0: none [default: 0.2; "
        "none with --folds, whose folds take turns as validation].",
        low=0,
        high=1,
        high_open=True,
    )
    folds: int | None = opt(
        None,
        "K-fold cross-validation: K stratified, seeded folds of the training images, each a complete run in "
        "OUT/fold-k/ validated on its fold; out-of-fold predictions in OUT/oof.csv, the cross-validated "
        "figures in OUT/metrics.json, and the model to ship (--folds-export). A val/ or test/ split is scored "
        "once at the end, never used for a choice.",
    )
    fold: int | None = opt(
        None,
        "With --folds K, one fold alone as a plain run: k (1..K) trains on the other folds and validates on "
        "fold k; 0 trains on every training image without validation (the refit).",
        low=0,
    )
    folds_export: str | None = opt(
        None,
        "With --folds: what OUT/model.safetensors is: refit (retrained on every training image for the "
        "median of the folds' kept epochs) | ensemble (no refit: predict and evaluate given the run folder "
        "average the K fold models) [default: refit].",
        choices=("refit", "ensemble"),
    )
    out: str = opt("runs/finetune", "Output folder.", flags=("-o",), resume="free")
    # labels from a file, multi-label, imbalanced classes
    labels: str | None = opt(
        None,
        "CSV or TSV of image paths (relative to --data, else to the file's folder) and "
        "labels, with an optional split column (train/val/test), instead of class folders.",
    )
    path_column: str = opt("path", "--labels: the column of image paths.")
    label_column: str = opt("label", "--labels: the column of labels.")
    split_column: str = opt("split", "--labels: the column of splits, train | val | test (used when present).")
    multi_label: bool = opt(
        False,
        "--labels: each image has any number of labels (sigmoid head, BCE; per-class thresholds chosen on validation).",
    )
    label_delimiter: str = opt("|", "--multi-label: what separates an image's labels in the label column.")
    balance: str = opt(
        "none",
        "Imbalanced classes: none | sampler (draw images with weights 1/class count) | loss "
        "(class-weighted loss; multi-label: positive weights), from the training counts.",
        choices=BALANCE,
    )
    select_metric: str | None = opt(
        None,
        "The validation metric that picks the kept epoch: accuracy | "
        "balanced_accuracy | macro_f1 | map (multi-label) [default: accuracy; map with "
        "--multi-label].",
        choices=SELECT_METRICS,
    )
    # what trains, and how fast
    strategy: str = opt(
        None,
        "linear-probe | finetune | two-stage | gradual [default: two-stage; finetune with --target-data].",
        choices=tuple(STRATEGIES),
    )
    epochs: int = opt(5, "Epochs in all (head-only epochs included).", low=1, resume="extend")
    head_epochs: int = opt(1, "two-stage: epochs training the head alone first.", low=0)
    unfreeze_every: int = opt(1, "gradual: epochs between unfreezing one more group, top down.", low=1)
    lr: float | None = opt(
        None,
        "Head learning rate [default: 2e-3; 2e-2 sgd, sgdp, lars; 2e-4 lion; 3e-3 with --target-data]; "
        "auto: run the LR finder first (zoo-adapt lr-find) and use its suggestion.",
        low=0,
        low_open=True,
        words=("auto",),
    )
    lr_body: float | None = opt(
        None,
        "Stem learning rate; groups in between as --lr-spread says [default: lr/100; lr/3 with --target-data].",
        low=0,
        low_open=True,
    )
    lr_spread: str = opt(
        None,
        "How groups get their rates from --lr-body: geometric (from --lr-body at the "
        "stem up to --lr at the head) | flat (--lr-body for all but the head) [default: "
        "geometric; flat with --target-data].",
        choices=tuple(SPREADS),
    )
    lr_decay: float | None = opt(
        None,
        "Instead of --lr-body: layer-wise decay, each group gets this times the one above.",
        flags=("--layer-decay",),
        low=0,
        high=1,
        low_open=True,
    )
    weight_decay: float = opt(0.01, "Weight decay (not applied to biases and norm parameters).", low=0)
    batch_size: int = opt(32, "Batch size (per process under torchrun).", low=1)
    optimizer: str = opt(
        "adamw",
        "timm's optimizer of this name (timm.optim.create_optimizer_v2 over the layer groups, each "
        "keeping its rate and weight decay): " + " | ".join(OPTIMIZERS) + ".",
        choices=tuple(OPTIMIZERS),
    )
    momentum: float = opt(
        0.9,
        "Momentum of the optimizers that have one (sgd: Nesterov's; sgdp, lars, rmsproptf).",
        low=0,
        high=1,
        high_open=True,
    )
    schedule: str = opt(
        None,
        "onecycle | cosine | constant | dann | step | poly | tanh (the last three: timm.scheduler's); "
        "restarts with warm-up whenever more layers unfreeze [default: onecycle; dann with --target-data].",
        choices=tuple(SCHEDULES),
    )
    warmup: float = opt(
        None, "Warm-up, as a fraction of each stage's steps [default: 0.1; 0 with --target-data].", low=0, high=1
    )
    label_smoothing: float = opt(
        None,
        "Label smoothing of the cross-entropy [default: 0.1; 0 with --target-data].",
        flags=("--smoothing",),
        low=0,
        high=1,
        high_open=True,
    )
    image_size: int | None = opt(
        None, "Training and evaluation size [default: the backbone's; 160 for the demo].", low=8
    )
    hflip: bool = opt(
        None,
        "Random horizontal flips in training and TTA (off for digits, text) [default: on; off with --target-data].",
    )
    vflip: bool = opt(
        False,
        "Random vertical flips in training and TTA (aerial, microscopy, medical images: no up or down).",
    )
    rot90: bool = opt(
        False,
        "Random rotations by 0, 90, 180 or 270 degrees in training and TTA (aerial, microscopy, medical images).",
    )
    in_chans: int = opt(
        3,
        "Input channels: 1 reads every image as grayscale (X-rays, microscopy, scanned documents) and "
        "adapts the pretrained first convolution as timm does (the RGB kernels summed); 3: RGB.",
        choices=(1, 3),
    )
    crop_scale: float = opt(
        None,
        "Smallest area fraction kept by the random resized crop (1: whole "
        "images) [default: 0.35; 1 with --target-data].",
        low=0,
        high=1,
        low_open=True,
    )
    bn: str = opt(
        "train",
        "BatchNorm in frozen groups: train (keeps adapting, fastai's train_bn) | frozen.",
        choices=tuple(BN_POLICIES),
    )
    seed: int = opt(0, "Random seed (data split, order, augmentation, head initialisation).", low=0)
    # training recipes (README, "Recipes")
    ema: float | None = opt(
        None,
        "Keep an exponential moving average of the weights with this decay (timm's "
        "ModelEmaV3, decay warming up from 0): validation and the export use it, e.g. 0.999.",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    clip_grad: float | None = opt(
        None,
        "Clip the gradient norm (over all trained parameters) to this value before each update "
        "(unscaled first under fp16), e.g. 1.0.",
        low=0,
        low_open=True,
    )
    drop_path: float | None = opt(
        None,
        "Drop-path (stochastic depth) rate, timm's drop_path_rate, e.g. 0.1: timm models only "
        "(timm/NAME, vit_*, efficientnet_lite0); torchvision's have no drop-path layers.",
        low=0,
        high=1,
        high_open=True,
    )
    grad_checkpointing: bool = opt(
        False,
        "Gradient checkpointing: recompute activations in the backward pass (timm's "
        "set_grad_checkpointing), less memory for a slower step; timm models only.",
    )
    accumulate: int = opt(
        1,
        "Gradient accumulation: one optimizer step every N batches (an effective batch N times --batch-size).",
        flags=("--grad-accum-steps",),
        low=1,
    )
    early_stop: int | None = opt(None, "Stop when the selection score has not improved for this many epochs.", low=1)
    augment: str = opt(
        "gentle",
        "Training augmentation: gentle (zoo-adapt's crop and flip) | randaugment | "
        "autoaugment | augmix | a timm auto-augment string such as rand-m9-mstd0.5-inc1 (timm's "
        "recipes, applied to PIL images in the loader after the crop).",
        flags=("--aa",),
    )
    random_erase: float = opt(
        0.0, "Probability of timm's random erasing of a patch per training image.", flags=("--reprob",), low=0, high=1
    )
    color_jitter: float = opt(
        0.0, "Colour jitter strength (brightness, contrast, saturation; timm's factor 0.4 is typical); 0: none.", low=0
    )
    mixup: float = opt(0.0, "Mixup alpha (timm's Mixup, 0.2-0.8 typical); 0: off.", low=0)
    cutmix: float = opt(
        0.0,
        "CutMix alpha (timm's Mixup; 1.0 typical); 0: off. With --mixup too, each batch gets one of the two.",
        low=0,
    )
    # where it runs (a resumed run may change these)
    device: str = opt("auto", "auto | cpu | cuda | cuda:N.", resume="free")
    precision: str = opt(
        "auto",
        "auto (bf16 autocast on CUDA GPUs that support it, fp16 with loss scaling on older "
        "ones, fp32 on CPU) | bf16 | fp16 (CUDA only) | fp32.",
        choices=PRECISIONS,
        resume="free",
    )
    workers: int | None = opt(
        None, "Data-loading processes [default: 0 on small CPUs, all cores but one on CUDA].", low=0, resume="free"
    )
    data_on_device: str = opt(
        "auto",
        "Hold the decoded images on the device (no decoding after the first pass; "
        "crops and flips drawn there): auto (when they take at most a quarter of its free "
        "memory) | on | off.",
        choices=ON_OFF,
        resume="free",
    )
    compile: bool = opt(False, "torch.compile the model (compile time is reported apart).", resume="free")
    sync_bn: bool = opt(
        False,
        "Under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA "
        "only) instead of each process's own batch.",
    )
    # starting point
    pretrained: bool = opt(True, "Start from the zoo's pretrained weights.")
    weights: str | None = opt(None, "A weights tag (e.g. IMAGENET1K_V1) or a local .safetensors/.pth file.")
    # what is kept and reported
    keep: str = opt(
        None,
        "Exported epoch: best (by --select-metric on source validation) | last [default: "
        "best; last with --target-data].",
        choices=("best", "last"),
    )
    tta: bool = opt(True, "Also report validation accuracy with test-time augmentation.", resume="free")
    calibrate: str = opt(
        "auto",
        "Temperature scaling of the exported probabilities (Guo et al. 2017), fitted on the validation "
        "images (with --folds: the out-of-fold predictions) and applied by predict and evaluate: auto (when "
        "there are at least 50 images and 2 of every class; else skipped, saying why) | on (fewer is an "
        "error) | off.",
        choices=ON_OFF,
        resume="free",
    )
    log: list[str] = opt(
        [],
        "Follow the run in an experiment tracker (repeatable): tensorboard | mlflow | wandb | a "
        "plugin's (zoo-adapt trackers). history.csv is written either way.",
        resume="free",
    )
    export: list[str] = opt(
        [],
        "Also export the kept model in this format (repeatable): onnx (model.onnx, checked with onnxruntime).",
        choices=EXPORT_FORMATS,
        resume="free",
    )
    analysis: str = opt(
        "auto",
        "Error analysis of the kept model at the end (analysis/: per-class table, confused "
        "pairs, top losses, class activation maps): auto (CAMs when grad-cam is installed) | on | "
        "off.",
        choices=ON_OFF,
        resume="free",
    )
    feature_cache: bool = opt(True, "linear-probe: compute the frozen body's features once and train the head on them.")
    cache_views: int = opt(
        1,
        "Feature cache: 1 = each image's eval view (exact, no augmentation); N > 1 = N "
        "augmented views, one drawn per image each epoch.",
        low=1,
    )
    resume: bool = opt(
        False,
        "Continue the run in --out from its checkpoint (its config.toml supplies the "
        "options; only --epochs, to add epochs, and how it runs may change).",
        resume="free",
    )
    # domain adaptation (any of these needs target_data)
    target_data: str | None = opt(
        None,
        "Unlabelled images of the target domain (any depth; labels never read): turns on domain adaptation.",
        adapting=True,
    )
    target_val: str | None = opt(None, "Labelled target ImageFolder, only to report an oracle accuracy.", adapting=True)
    adapt: str = opt("dann", "Adaptation method (zoo-adapt methods): dann | mcc | adabn | a plugin's.", adapting=True)
    adapt_weight: float = opt(
        1.0, "Final weight of the adaptation loss (DANN: the lambda it rises to).", low=0, adapting=True
    )
    adapt_options: dict[str, Any] = opt(
        {},
        "The adaptation method's own options (KEY=VALUE; `zoo-adapt methods "
        "NAME` lists them), checked when the run starts.",
        adapting=True,
    )
    target_bn: str | None = opt(
        None,
        "BatchNorm statistics the adapted model keeps: target (measured on the "
        "--target-data images after training: AdaBN, Li et al. 2016) | mixed (the running "
        "statistics of the mixed source and target training batches, as in Ganin et al.) "
        "[default: target].",
        choices=BN_STATISTICS,
        adapting=True,
    )
    steps_per_epoch: int | None = opt(
        None, "With --target-data: steps per epoch [default: the longer loader].", low=1, adapting=True
    )
    select_with_target_labels: bool = opt(
        False,
        "Keep the epoch best on --target-val. This USES TARGET LABELS: an oracle, not a deployable setting.",
        adapting=True,
    )

    def __post_init__(self) -> None:
        """Fill in the defaults that depend on other options: the fields annotated without
        None but declared with a None default (strategy, schedule, ...) always hold a value
        afterwards."""
        for key in ("log", "export"):  # repeatable: given as a tuple by the CLI, kept once each, in order
            if isinstance(getattr(self, key), (list, tuple)):
                setattr(self, key, list(dict.fromkeys(getattr(self, key))))
        adapting = bool(self.target_data)
        defaults = ADAPT_DEFAULTS if adapting else PLAIN_DEFAULTS
        for key, value in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if adapting and self.lr_body is None and self.lr_decay is None and isinstance(self.head_lr, (int, float)):
            self.lr_body = self.head_lr / 3  # the body at 1e-3, the head at 3e-3: docs/adaptation.md, "Rates"

    def validate(self) -> FinetuneConfig:
        """Every value against its declaration, then the rules between options."""
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name), "--" + f.name.replace("_", "-"))
        if self.lr_body is not None and self.lr_decay is not None:
            raise ZooAdaptError("give --lr-body or --lr-decay, not both")
        if self.data and self.dataset:
            raise ZooAdaptError("give --data or --dataset, not both")
        if self.rank_from and self.backbone != "auto":
            raise ZooAdaptError("--rank-from chooses the backbone: it needs --backbone auto")
        self.check_labels()
        self.check_folds()
        self.check_path_kinds()
        if not self.target_data:
            for key in ("target_val", "select_with_target_labels", "steps_per_epoch", "target_bn"):
                if getattr(self, key):
                    raise ZooAdaptError(f"--{key.replace('_', '-')} needs --target-data")
            if self.adapt_options:
                given = ", ".join(map(quote, self.adapt_options))
                raise ZooAdaptError(f"--adapt-option (or [adapt_options]) {given} needs --target-data")
        if self.lr == "auto" and self.target_data:
            raise ZooAdaptError("--lr auto is for plain fine-tuning; with --target-data give a number (default 3e-3)")
        if self.select_with_target_labels and not self.target_val:
            raise ZooAdaptError("--select-with-target-labels needs --target-val")
        return self

    def check_path_kinds(self) -> None:
        """A path that exists but is the wrong kind (a folder for a file, or the other way
        round) says what is expected, not "not found"."""
        for key, folder in (("data", True), ("labels", False), ("target_data", True), ("target_val", True)):
            path = getattr(self, key)
            if not path or not Path(path).exists() or Path(path).is_dir() == folder:
                continue
            flag = "--" + key.replace("_", "-")
            if folder:
                raise ZooAdaptError(f"{flag} takes a folder of images; {path} is a file")
            raise ZooAdaptError(f"{flag} takes a CSV or TSV file; {path} is a folder")

    def check_labels(self) -> None:
        if self.labels and self.dataset:
            raise ZooAdaptError("give --labels or --dataset, not both")
        if self.multi_label and not self.labels:
            raise ZooAdaptError("--multi-label needs --labels (a label file whose label column holds the labels)")
        if not self.label_delimiter.strip():
            raise ZooAdaptError("--label-delimiter needs a visible character, e.g. '|' or ';'")
        if self.multi_label and self.select_metric == "balanced_accuracy":
            raise ZooAdaptError(
                "--select-metric balanced_accuracy is for single-label data; with --multi-label use map or macro_f1"
            )
        if not self.multi_label and self.select_metric == "map":
            raise ZooAdaptError(
                "--select-metric map is for --multi-label; for single labels use accuracy, "
                "balanced_accuracy or macro_f1"
            )
        if self.multi_label and self.target_data:
            raise ZooAdaptError(
                "--multi-label does not combine with --target-data (adaptation methods expect one label per image)"
            )

    def check_folds(self) -> None:
        """--folds and its companions, against each other and the data options."""
        if self.folds is None:
            for key, what in (("fold", "one fold of --folds K"), ("folds_export", "what --folds K exports")):
                if getattr(self, key) is not None:
                    value = getattr(self, key)
                    single = "; a single run has one model to export" if key == "folds_export" else ""
                    raise ZooAdaptError(f"--{key.replace('_', '-')} {value} is {what}: give --folds K too{single}")
            return
        if self.folds < 2:
            raise ZooAdaptError(
                f"--folds {self.folds} is no cross-validation: give 2 or more folds (5 is usual), or leave --folds out"
            )
        if self.fold is not None and self.fold > self.folds:
            raise ZooAdaptError(f"--fold {self.fold}: --folds {self.folds} has folds 1 to {self.folds} (0: the refit)")
        if self.val_split is not None:
            raise ZooAdaptError(
                f"--folds {self.folds} validates on each fold of the training images in turn, so --val-split does "
                "not apply: leave it out (a val/ or test/ split, when there is one, is scored once at the end)"
            )
        if self.dataset:
            raise ZooAdaptError(
                "--folds cross-validates folders, label files and the demo, not torchvision datasets "
                "(--dataset), which are large and come with their own test split"
            )
        if self.target_data:
            raise ZooAdaptError("--folds does not combine with --target-data (domain adaptation)")

    @property
    def held_out_fraction(self) -> float:
        """What --val-split holds out: as given, else 0.2, or nothing with --folds."""
        if self.val_split is not None:
            return self.val_split
        return 0.0 if self.folds else 0.2

    @property
    def selection_metric(self) -> str:
        return self.select_metric or ("map" if self.multi_label else "accuracy")

    @property
    def head_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LRS.get(self.optimizer, 2e-3)

    @property
    def adapting(self) -> bool:
        return bool(self.target_data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "config") -> FinetuneConfig:
        return cls(**read_options(values, origin))


def declarations() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(FinetuneConfig)}


_HINTS: dict[str, Any] = {}


def value_type(name: str) -> tuple[type, bool]:
    """(the option's type, whether it may be None)."""
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(FinetuneConfig))
    hint = _HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (dict, list):
        return typing.get_origin(hint), False
    if args:
        return args[0], type(None) in typing.get_args(hint)
    return hint, False


def check_value(name: str, value: Any, label: str) -> Any:
    """`value` of option `name`, checked against its declaration; errors name `label`
    (the flag, or the key of a config file)."""
    meta = declarations()[name].metadata
    kind, optional = value_type(name)
    if kind is list and value is not None:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ZooAdaptError(f"{label} takes names (a list of texts), not {quote(value)}")
        for item in value:
            if meta["choices"] and item not in meta["choices"]:
                raise ZooAdaptError(f"{label} must be one of {', '.join(meta['choices'])}, not {quote(item)}")
        return list(dict.fromkeys(value))
    if isinstance(value, str) and value in meta["words"]:
        return value
    if meta["words"] and kind in (int, float) and isinstance(value, (str, bool)):
        also = "".join(f" or {word}" for word in meta["words"])
        raise ZooAdaptError(f"{label} must be {WORDS[kind]}{also}, not {quote(value)}")
    return check(
        value,
        kind,
        label,
        optional=optional,
        low=meta["low"],
        high=meta["high"],
        low_open=meta["low_open"],
        high_open=meta["high_open"],
        choices=meta["choices"],
    )


def read_options(values: dict[str, Any], origin: str) -> dict[str, Any]:
    """Keys as the flags (lr-body) or as the Python names (lr_body), each checked;
    unknown keys are an error that suggests the closest name."""
    known = declarations()
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        label = "--" + name.replace("_", "-") if origin == "command line" else f"{origin}: {key}"
        if name in MOVED:
            raise ZooAdaptError(f"{origin}: {key!r} is now an option of the dann method: {MOVED[name]}")
        if name not in known:
            hint = closest(name.replace("_", "-"), [k.replace("_", "-") for k in known])
            raise ZooAdaptError(f"{origin}: unknown option {quote(key)}{hint}")
        if name in out:
            raise ZooAdaptError(f"{origin}: {key!r} is given twice (as {name.replace('_', '-')!r} and {name!r})")
        out[name] = check_value(name, value, label)
    return out


def resolved_values(config: FinetuneConfig) -> dict[str, Any]:
    """What config.toml records: every option with its resolved value, defaults
    included; adaptation options only when adapting; None (not given, chosen per
    machine) left out; `resume` never."""
    values = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "resume" or value is None or (f.metadata["adapting"] and not config.adapting):
            continue
        values[f.name] = value
    return values


def resume_conflicts(stored: FinetuneConfig, given: dict[str, Any]) -> list[str]:
    """Options given with --resume that would change what the run computes."""
    conflicts = []
    for name, value in given.items():
        policy = declarations()[name].metadata["resume"]
        old = getattr(stored, name)
        if policy == "free" or old == value:
            continue
        if policy == "extend" and value >= old:
            continue
        flag = "--" + name.replace("_", "-")
        conflicts.append(f"{flag} {value!r} (the run was started with {old!r})")
    return conflicts


def load_config_file(path: str) -> dict[str, Any]:
    """A TOML file of options (keys as the flags or as the Python names)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ZooAdaptError(f"cannot read config file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ZooAdaptError(f"config file {path} is not valid TOML: {e}") from None


def build_config(given: dict[str, Any], config_file: str | None = None) -> FinetuneConfig:
    """Options given on the command line over a config file's; with --resume, over the
    run's own config.toml, where only what `resume` policies allow may change."""
    values: dict[str, Any] = {}
    if given.get("resume"):
        if config_file:
            raise ZooAdaptError("--resume continues a run with its own config.toml; leave out --config")
        out = Path(given.get("out", declarations()["out"].default))
        stored_file = out / "config.toml"
        if not stored_file.is_file():
            raise ZooAdaptError(f"nothing to resume: {stored_file} does not exist")
        values = read_options(load_config_file(str(stored_file)), str(stored_file))
        conflicts = resume_conflicts(
            FinetuneConfig(**values), {k: v for k, v in _merged(values, given).items() if k not in ("resume", "out")}
        )
        if conflicts:
            raise ZooAdaptError(
                f"--resume keeps the options the run was started with; not {conflicts[0]} "
                "(start a new run with another --out to change it)"
            )
    elif config_file:
        values = read_options(load_config_file(config_file), config_file)
    values.update(_merged(values, read_options(given, "command line")))
    return FinetuneConfig(**values).validate()


def _merged(values: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over `values`, where method options given on the command line join (and
    override) those of the config file or of the resumed run instead of replacing them."""
    given = {k.replace("-", "_"): v for k, v in given.items()}
    if isinstance(given.get("adapt_options"), dict) and isinstance(values.get("adapt_options"), dict):
        given["adapt_options"] = {**values["adapt_options"], **given["adapt_options"]}
    return given
