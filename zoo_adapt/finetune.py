"""A fine-tuning job: data in, a run folder out (model.safetensors, metrics.json, plots,
config.toml, checkpoint.pt). `zoo-adapt finetune` is a thin layer over `finetune()`.

The job builds the pieces (model, batch sources, optimizer, schedule, callbacks), hands
them to the loop (`zoo_adapt.engine.Loop`), and writes the results. A run is a list of
epochs, each with a freeze boundary from the strategy; one optimizer holds every
parameter with its layer group's rate, and the schedule restarts (warm-up included)
whenever the boundary moves.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .config import FinetuneConfig
from .demo import IMAGE_SIZE as DEMO_IMAGE_SIZE
from .device import prepare, resolve_device
from .engine import Callback, Compile, Loop, MixedPrecision, Progress, freeze_plan, seed_everything
from .engine.loop import SingleLabel
from .export import export_model
from .inputs import FeedMaker, is_demo, load_datasets
from .models import create_model, num_classes_of, swap_head
from .optim import make_optimizer, param_groups, stage_schedule
from .run_folder import ADAPTATION_FILE, CHECKPOINT, CONFIG_FILE, METRICS_FILE, MODEL_FILE, RunFolder, \
    prepare_out, write_config, write_json


@dataclass
class FinetuneResult:
    model: torch.nn.Module
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    out: Path


class KeepBest(Callback):
    """A copy of the weights of the best epoch so far (on the CPU), checkpointed with the
    run, so the kept model never has to be read back from an exported file."""

    def __init__(self):
        self.state: dict[str, torch.Tensor] | None = None

    def epoch_end(self, loop, record, improved: bool) -> None:
        if improved:
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in loop.model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state} if self.state is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state.get("state")


def finetune(config: FinetuneConfig, callbacks: Sequence[Callback] = (), log: Callable[[str], None] | None = print,
             overwrite: bool = False) -> FinetuneResult:
    """Run a fine-tuning job as configured; returns the model, per-epoch history and final metrics.

    The exported model is the best epoch by validation accuracy (or the last, with
    keep='last'). Interrupting (Ctrl-C) leaves checkpoint.pt after the last finished epoch
    and the best model so far; `resume=True` continues exactly where it stopped.
    `callbacks`: more `zoo_adapt.engine.Callback` objects for the loop."""
    config.validate()
    log = log or (lambda s: None)
    out = prepare_out(config, overwrite)
    device = resolve_device(config.device)
    prepare(device)
    seed_everything(config.seed)
    model = create_model(config.backbone, pretrained=config.pretrained, weights=config.weights)
    norm = model.zoo_adapt.normalization
    image_size = config.image_size or (DEMO_IMAGE_SIZE if is_demo(config) else norm.image_size)
    data = load_datasets(config)
    if num_classes_of(model) != len(data.classes):
        seed_everything(config.seed)
        swap_head(model, len(data.classes))
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    amp = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext
    maker = FeedMaker(config, norm, image_size, device)
    feeds = maker.feeds(data, model, autocast)
    num_val = feeds.val.num_samples if feeds.val is not None else 0
    log(f"{config.backbone}: {len(data.classes)} classes, {feeds.train.num_samples} training and {num_val} "
        f"validation images ({data.where}), {image_size}px, {device}, strategy {config.strategy}; {feeds.how}")

    pieces: list[Callback] = [MixedPrecision()] if amp else []
    if config.compile:
        pieces.append(Compile())
    adaptation, gap_before = None, None
    if config.target_data:
        from .adaptation import start_adaptation

        adaptation, gap_before = start_adaptation(config, model, data.classes, maker, feeds, autocast, log)
        pieces.append(adaptation)
    steps = len(feeds.train)
    if adaptation is not None:
        steps = config.steps_per_epoch or max(steps, len(adaptation.target))
    plan = freeze_plan(config.strategy, config.epochs, len(model.zoo_adapt.groups), config.head_epochs,
                       config.unfreeze_every)
    lr_body = config.lr_body if config.lr_body is not None or config.lr_decay is not None else config.head_lr / 100
    extra = adaptation.method.param_groups(config.head_lr, config.weight_decay) if adaptation else []
    optimizer = make_optimizer(extra + param_groups(model, config.head_lr, lr_body=lr_body,
                                                    lr_decay=config.lr_decay, weight_decay=config.weight_decay),
                               config.optimizer, config.momentum, fused=device.type == "cuda")
    keep_best = KeepBest()
    metrics_of = lambda finished: _metrics(loop, config, data, feeds, finished)  # noqa: E731

    def export(epoch: int) -> None:
        export_model(model, out / MODEL_FILE, data.classes, image_size, {"epoch": epoch, "hflip": config.hflip})

    loop = Loop(model, train=feeds.train, val=feeds.val, classes=data.classes, plan=plan, optimizer=optimizer,
                schedule=stage_schedule(plan, steps, config.schedule, config.warmup),
                callbacks=[*pieces, keep_best, RunFolder(out, config.keep, export, metrics_of), Progress(log),
                           *callbacks],
                task=SingleLabel(config.label_smoothing), seed=config.seed,
                bn="frozen" if config.strategy == "linear-probe" else config.bn,
                eval_body=config.strategy == "linear-probe", steps_per_epoch=steps, device=device,
                network=feeds.network)
    if config.resume:
        loop.load_state_dict(torch.load(out / CHECKPOINT, map_location=device, weights_only=True))
        log(f"resuming after epoch {loop.epoch} of {len(loop.plan)}")
    out.mkdir(parents=True, exist_ok=True)
    write_config(config, out / CONFIG_FILE)
    start = time.perf_counter()
    try:
        loop.fit()
    except KeyboardInterrupt:
        log(f"\ninterrupted: {out / CHECKPOINT} holds epoch {loop.epoch}; continue with "
            f"`zoo-adapt finetune --out {out} --resume`")
        raise
    metrics = metrics_of(True)
    metrics["train_seconds"] = time.perf_counter() - start
    kept = loop.best[1] if config.keep == "best" and loop.best else len(loop.history)
    if kept != len(loop.history) and keep_best.state is not None:
        model.load_state_dict(keep_best.state)
    metrics["kept_epoch"] = kept
    if feeds.val is not None:
        final = loop.validate()
        metrics.update({"val_accuracy": final.accuracy, "val_top5": final.top5, "val_loss": final.loss,
                        "per_class_accuracy": final.per_class, "confusion_matrix": final.confusion})
        if config.tta:
            network = loop.eval_network if feeds.network is None else model
            tta = loop.validate(tta=True, flip=config.hflip, batches=feeds.val_images, network=network)
            metrics.update({"val_accuracy_tta": tta.accuracy, "val_top5_tta": tta.top5})
    from .report import plot_confusion, plot_curves

    if adaptation is not None:
        from .adaptation import finish_adaptation

        finish_adaptation(adaptation, config, loop, feeds, gap_before, metrics, out / ADAPTATION_FILE)
    export_model(model, out / MODEL_FILE, data.classes, image_size,
                 {"epoch": kept, "val_accuracy": metrics.get("val_accuracy"), "hflip": config.hflip})
    write_json(metrics, out / METRICS_FILE)
    extra_panels = ("domain_accuracy",) if adaptation is not None else ()
    plot_curves(metrics["history"], out / "curves.png", title=f"{config.backbone} ({config.strategy})",
                extra=extra_panels)
    if "confusion_matrix" in metrics:
        plot_confusion(metrics["confusion_matrix"], data.classes, out / "confusion_matrix.png")
    return FinetuneResult(model, metrics["history"], metrics, out)


def _metrics(loop: Loop, config: FinetuneConfig, data, feeds, finished: bool) -> dict[str, Any]:
    history = [r.to_dict() for r in loop.history]
    return {
        "backbone": config.backbone, "strategy": config.strategy, "data": data.where,
        "classes": data.classes, "num_train": feeds.train.num_samples,
        "num_val": feeds.val.num_samples if feeds.val is not None else 0,
        "device": str(loop.device), "precision": "bf16" if loop.amp_dtype is not None else "fp32",
        "epochs_done": len(history), "epochs": len(loop.plan),
        "best_epoch": loop.best[1] if loop.best else None,
        "best_val_accuracy": loop.best[0] if loop.best else None,
        "images_per_second": (sum(r["images_per_second"] for r in history) / len(history)) if history else None,
        "history": history, "finished": finished,
    }
