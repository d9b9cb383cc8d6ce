"""A fine-tuning job: data in, a folder out (model.safetensors, metrics.json, plots,
config.toml, checkpoint.pt). `zoo-adapt finetune` is a thin layer over `finetune()`."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from . import data as data_
from .config import FinetuneConfig
from .demo import IMAGE_SIZE as DEMO_IMAGE_SIZE
from .errors import ZooAdaptError
from .export import export_model
from .models import create_model, num_classes_of, swap_head
from .train import (
    CHECKPOINT,
    Trainer,
    resolve_device,
    save_atomic,
    seed_everything,
    write_json,
)
from .transforms import eval_transform, train_transform

MODEL_FILE = "model.safetensors"
ADAPTATION_FILE = "adaptation.safetensors"  # the method's own modules (a domain classifier), beside the model
RUN_FILES = (MODEL_FILE, CHECKPOINT, "metrics.json")


@dataclass
class FinetuneResult:
    model: torch.nn.Module
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    out: Path


def is_demo(config: FinetuneConfig) -> bool:
    """No data given: the embedded demo."""
    return not config.data and not config.dataset


def demo_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "zoo-adapt" / "demo"


def load_datasets(config: FinetuneConfig, train_tf, val_tf) -> tuple[Dataset, Dataset | None, list[str], str]:
    """(train, val or None, classes, description of where they came from)."""
    if config.dataset:
        train, val, classes = data_.torchvision_dataset(config.dataset, config.data_dir, train_tf, val_tf)
        return train, val, classes, f"torchvision {config.dataset} in {config.data_dir}"
    if is_demo(config):
        from .demo import build_demo

        root = build_demo(demo_root())
    else:
        root = Path(config.data)
    if not root.exists():
        raise ZooAdaptError(f"data folder not found: {root}")
    train_dir, val_dir = data_.split_dirs(root)
    if train_dir is not None:
        train = data_.scan_folder(train_dir)
        if val_dir is not None:
            val = data_.scan_folder(val_dir, classes=train.classes)
            where = f"{train_dir} / {val_dir}"
        else:
            train, val = _split(train, config)
            where = f"{train_dir}, {config.val_split:.0%} held out"
    else:
        train, val = _split(data_.scan_folder(root), config)
        where = f"{root}, {config.val_split:.0%} held out" if val else str(root)
    return (data_.ImageDataset(train, train_tf), data_.ImageDataset(val, val_tf) if val else None,
            train.classes, where)


def _split(samples, config):
    if config.val_split == 0:
        return samples, None
    return data_.stratified_split(samples, config.val_split, config.seed)


def loader_kwargs(config: FinetuneConfig, device: torch.device) -> dict[str, Any]:
    workers = data_.default_workers(device) if config.workers is None else config.workers
    return dict(num_workers=workers, pin_memory=device.type == "cuda")


def make_loaders(train: Dataset, val: Dataset | None, config: FinetuneConfig,
                 device: torch.device) -> tuple[DataLoader, DataLoader | None]:
    if len(train) < 2:
        raise ZooAdaptError("training needs at least two images")
    common = loader_kwargs(config, device)
    train_loader = DataLoader(train, batch_size=config.batch_size, shuffle=True,
                              generator=torch.Generator(), drop_last=len(train) >= config.batch_size,
                              **common)
    val_loader = DataLoader(val, batch_size=config.batch_size * 2, shuffle=False, **common) if val else None
    return train_loader, val_loader


def prepare_out(config: FinetuneConfig, overwrite: bool) -> Path:
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ZooAdaptError(f"--out {out} is a file, not a folder")
    checkpoint = out / CHECKPOINT
    if config.resume:
        if not checkpoint.is_file():
            raise ZooAdaptError(f"nothing to resume: {checkpoint} does not exist")
    elif not overwrite and any((out / f).exists() for f in RUN_FILES):
        raise ZooAdaptError(f"{out} already holds a run; continue it with --resume, or pass "
                            "--overwrite, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_config(config: FinetuneConfig, path: Path) -> None:
    import tomli_w

    values = {k: v for k, v in config.to_dict().items() if v is not None and k != "resume"}
    path.write_text(tomli_w.dumps(values))


def finetune(config: FinetuneConfig, callbacks: list[Callable] = (), log: Callable[[str], None] | None = print,
             overwrite: bool = False, trainer_cls: type[Trainer] | None = None, **trainer_kwargs) -> FinetuneResult:
    """Run a fine-tuning job as configured; returns the model, per-epoch history and final metrics.

    The exported model is the best epoch by validation accuracy (or the last, with
    keep='last'). Interrupting (Ctrl-C) leaves checkpoint.pt after the last finished epoch
    and the best model so far; `resume=True` continues exactly where it stopped."""
    config.validate()
    log = log or (lambda s: None)
    out = prepare_out(config, overwrite)
    write_config(config, out / "config.toml")
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model = create_model(config.backbone, pretrained=config.pretrained, weights=config.weights)
    norm = model.zoo_adapt.normalization
    image_size = config.image_size or (DEMO_IMAGE_SIZE if is_demo(config) else norm.image_size)
    train_tf = train_transform(norm, image_size, min_scale=config.crop_scale, hflip=config.hflip)
    eval_tf = eval_transform(norm, image_size)
    train, val, classes, where = load_datasets(config, train_tf, eval_tf)
    if num_classes_of(model) != len(classes):
        seed_everything(config.seed)
        swap_head(model, len(classes))
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    train_loader, val_loader = make_loaders(train, val, config, device)
    log(f"{config.backbone}: {len(classes)} classes, {len(train)} training and "
        f"{len(val) if val else 0} validation images ({where}), {image_size}px, {device}, "
        f"strategy {config.strategy}")
    adaptation, trainer_kwargs = None, dict(trainer_kwargs)
    if config.target_data:
        from .adaptation import AdaptationRun, AdaptTrainer

        adaptation = AdaptationRun(config, model, classes, train_tf, eval_tf, loader_kwargs(config, device), device)
        trainer_cls = trainer_cls or AdaptTrainer
        trainer_kwargs.update(adaptation.trainer_kwargs())
        gap_before = adaptation.domain_gap(val_loader or train_loader)
        log(f"adapting to {len(adaptation.target)} unlabelled target images ({config.target_data}) with "
            f"{config.adapt}; domain gap before (proxy A-distance): {gap_before:.2f}")

    def save(trainer: Trainer, event: str, **info) -> None:
        if event != "epoch_end":
            return
        save_atomic(trainer.checkpoint_state(), out / CHECKPOINT)
        if adaptation is not None:
            adaptation.save_method(out / ADAPTATION_FILE)
        if info["improved"] or config.keep == "last" or trainer.best is None:
            export_model(model, out / MODEL_FILE, classes, image_size,
                         {"epoch": info["record"].epoch, "hflip": config.hflip})
        write_json(_metrics(trainer, config, classes, len(train), val, where, finished=False),
                   out / "metrics.json")

    cls = trainer_cls or Trainer
    trainer = cls(model, train_loader, val_loader, classes, config,
                  callbacks=[*callbacks, save], log=log, **trainer_kwargs)
    if config.resume:
        trainer.load_checkpoint_state(torch.load(out / CHECKPOINT, map_location=device, weights_only=True))
        log(f"resuming after epoch {trainer.epoch} of {len(trainer.plan)}")
    start = time.perf_counter()
    try:
        trainer.fit()
    except KeyboardInterrupt:
        log(f"\ninterrupted: {out / CHECKPOINT} holds epoch {trainer.epoch}; continue with "
            f"`zoo-adapt finetune --out {out} --resume`")
        raise
    metrics = _metrics(trainer, config, classes, len(train), val, where, finished=True)
    metrics["train_seconds"] = time.perf_counter() - start
    kept = trainer.best[1] if config.keep == "best" and trainer.best else len(trainer.history)
    if kept != len(trainer.history):
        from .models import load_state_dict_into
        from .weights import read_state_dict

        load_state_dict_into(model, {k: v.to(device) for k, v in read_state_dict(out / MODEL_FILE).items()},
                             "the best epoch's export")
    metrics["kept_epoch"] = kept
    if val_loader is not None:
        final = trainer.validate()
        metrics.update({"val_accuracy": final.accuracy, "val_top5": final.top5, "val_loss": final.loss,
                        "per_class_accuracy": final.per_class, "confusion_matrix": final.confusion})
        if config.tta:
            tta = trainer.validate(tta=True)
            metrics.update({"val_accuracy_tta": tta.accuracy, "val_top5_tta": tta.top5})
    from .report import plot_confusion, plot_curves, plot_domain_gap

    if adaptation is not None:
        metrics.update(adaptation.summary(metrics))
        metrics["proxy_a_distance"] = {"before": gap_before,
                                       "after": adaptation.domain_gap(val_loader or train_loader)}
        if adaptation.target_val_loader is not None:
            metrics["target_accuracy_oracle"] = trainer.epoch_figures()["target_accuracy_oracle"]
            metrics["target_accuracy_oracle_note"] = ("measured with target labels (--target-val): a figure "
                                                      "for reporting, not used for selection" if not
                                                      config.select_with_target_labels else
                                                      "measured with target labels and USED to select the epoch")
        plot_domain_gap(metrics["proxy_a_distance"], metrics["history"], out / "domain_gap.png")
    trainer.close()
    export_model(model, out / MODEL_FILE, classes, image_size,
                 {"epoch": kept, "val_accuracy": metrics.get("val_accuracy"), "hflip": config.hflip})
    write_json(metrics, out / "metrics.json")
    extra = ("domain_accuracy",) if adaptation is not None else ()
    plot_curves(metrics["history"], out / "curves.png", title=f"{config.backbone} ({config.strategy})", extra=extra)
    if "confusion_matrix" in metrics:
        plot_confusion(metrics["confusion_matrix"], classes, out / "confusion_matrix.png")
    return FinetuneResult(model, metrics["history"], metrics, out)


def _metrics(trainer: Trainer, config: FinetuneConfig, classes: list[str], num_train: int,
             val: Dataset | None, where: str, finished: bool) -> dict[str, Any]:
    history = [r.to_dict() for r in trainer.history]
    return {
        "backbone": config.backbone, "strategy": config.strategy, "data": where,
        "classes": classes, "num_train": num_train, "num_val": len(val) if val else 0,
        "device": str(trainer.device), "precision": "bf16" if trainer.autocast else "fp32",
        "epochs_done": len(history), "epochs": len(trainer.plan),
        "best_epoch": trainer.best[1] if trainer.best else None,
        "best_val_accuracy": trainer.best[0] if trainer.best else None,
        "images_per_second": (sum(r["images_per_second"] for r in history) / len(history)) if history else None,
        "history": history, "finished": finished,
    }
