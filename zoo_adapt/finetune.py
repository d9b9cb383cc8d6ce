"""A fine-tuning job: data in, a run folder out (model.safetensors, metrics.json, plots,
config.toml, checkpoint.pt). `zoo-adapt finetune` is a thin layer over `finetune()`.

The job checks everything (options, data, model, checkpoint) before it writes anything,
builds the pieces (batch sources, optimizer, schedule, callbacks), hands them to the
loop (`zoo_adapt.engine.Loop`), and writes the results. A run is a list of epochs, each
with a freeze boundary from the strategy; one optimizer holds every parameter with its
layer group's rate, and the schedule restarts (warm-up included) whenever the boundary
moves.
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .config import FinetuneConfig, declarations, resolved_values
from .demo import IMAGE_SIZE as DEMO_IMAGE_SIZE
from .device import prepare, resolve_device
from .engine import Callback, Compile, Loop, MixedPrecision, Progress, freeze_plan, seed_everything
from .engine.loop import SingleLabel
from .errors import ZooAdaptError
from .export import export_model
from .inputs import FeedMaker, is_demo, load_datasets
from .models import create_model, num_classes_of, swap_head
from .optim import make_optimizer, param_groups, stage_schedule
from .run_folder import ADAPTATION_FILE, CHECKPOINT, CHECKPOINT_FORMAT, EpochRecorder, RunFolder, config_text


@dataclass
class FinetuneResult:
    model: torch.nn.Module
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    out: Path


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run, after the folder was left resumable (or clean)."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.message, self.signal_name = message, signal_name


def resolve(config: FinetuneConfig, image_size: int) -> FinetuneConfig:
    """The options with every default that depends on the backbone or on others filled
    in, as config.toml records them."""
    lr_body = config.lr_body
    if lr_body is None and config.lr_decay is None:
        lr_body = config.head_lr / 100
    return dataclasses.replace(config, image_size=image_size, lr=config.head_lr, lr_body=lr_body)


def finetune(config: FinetuneConfig, callbacks: Sequence[Callback] = (), log: Callable[[str], None] | None = print,
             overwrite: bool = False) -> FinetuneResult:
    """Run a fine-tuning job as configured; returns the model, per-epoch history and final metrics.

    The exported model is the best epoch by validation accuracy (or the last, with
    keep='last'). Interrupting (Ctrl-C) leaves a resumable folder (or, before the first
    checkpoint, a clean one); `resume=True` continues exactly where it stopped.
    `callbacks`: more `zoo_adapt.engine.Callback` objects for the loop."""
    config = with_method_options(config.validate())
    log = log or (lambda s: None)
    folder = RunFolder(config.out)
    folder.precheck(config.resume, overwrite)
    with folder.locked():
        return _run(config, folder, list(callbacks), log)


def with_method_options(config: FinetuneConfig) -> FinetuneConfig:
    """With --target-data: the method's options checked against what its plugin
    declared, defaults filled in (so config.toml records every value)."""
    if not config.adapting:
        return config
    from .methods import resolve_options

    return dataclasses.replace(config, adapt_options=resolve_options(config.adapt, config.adapt_options))


def _run(config: FinetuneConfig, folder: RunFolder, callbacks: list[Callback], log) -> FinetuneResult:
    device = resolve_device(config.device)
    prepare(device)
    stored = folder.read_checkpoint(device) if config.resume else None
    seed_everything(config.seed)
    model = create_model(config.backbone, pretrained=config.pretrained and stored is None, weights=config.weights)
    norm = model.zoo_adapt.normalization
    config = resolve(config, config.image_size or (DEMO_IMAGE_SIZE if is_demo(config) else norm.image_size))
    data = load_datasets(config)
    if stored is not None:
        _check_resumable(stored, config, data.classes, folder)
    if num_classes_of(model) != len(data.classes):
        seed_everything(config.seed)
        swap_head(model, len(data.classes))
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    amp = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext
    maker = FeedMaker(config, norm, config.image_size, device)
    feeds = maker.feeds(data, model, autocast)
    num_val = feeds.val.num_samples if feeds.val is not None else 0
    log(f"{config.backbone}: {len(data.classes)} classes, {feeds.train.num_samples} training and {num_val} "
        f"validation images ({data.where}), {config.image_size}px, {device}, strategy {config.strategy}; "
        f"{feeds.how}")

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
    extra = adaptation.method.param_groups(config.head_lr, config.weight_decay) if adaptation else []
    optimizer = make_optimizer(extra + param_groups(model, config.head_lr, lr_body=config.lr_body,
                                                    lr_decay=config.lr_decay, weight_decay=config.weight_decay,
                                                    spread=config.lr_spread),
                               config.optimizer, config.momentum, fused=device.type == "cuda")

    def write_model(path: Path, state: dict | None, epoch: int, **extra_meta) -> Path:
        return export_model(model, path, data.classes, config.image_size,
                            {"epoch": epoch, "hflip": config.hflip, **extra_meta}, state=state)

    values = resolved_values(config)
    recorder = EpochRecorder(folder, config.keep, {"format": CHECKPOINT_FORMAT, "config": values,
                                                   "backbone": config.backbone, "classes": data.classes},
                             write_model, lambda finished: _metrics(loop, config, data, feeds, finished))
    loop = Loop(model, train=feeds.train, val=feeds.val, classes=data.classes, plan=plan, optimizer=optimizer,
                schedule=stage_schedule(plan, steps, config.schedule, config.warmup),
                callbacks=[*pieces, recorder, Progress(log), *callbacks],
                task=SingleLabel(config.label_smoothing), seed=config.seed,
                bn="frozen" if config.strategy == "linear-probe" else config.bn,
                eval_body=config.strategy == "linear-probe", steps_per_epoch=steps, device=device,
                network=feeds.network)
    if stored is not None:
        loop.load_state_dict(stored)
        log(f"resuming after epoch {loop.epoch} of {len(loop.plan)}")
    folder.begin(config_text(values, _machine_notes(config)), fresh=stored is None)
    if stored is not None:
        recorder.commit_outputs()  # model and metrics as the checkpoint says (a kill may have left them behind)
    start = time.perf_counter()
    try:
        loop.fit()
        metrics = _finish(loop, config, data, feeds, recorder, adaptation, gap_before, folder, write_model)
    except KeyboardInterrupt as e:
        raise _interrupted(e, loop, folder) from None
    metrics["train_seconds"] = time.perf_counter() - start
    return FinetuneResult(model, metrics["history"], metrics, folder.out)


def _finish(loop: Loop, config: FinetuneConfig, data, feeds, recorder: EpochRecorder, adaptation, gap_before,
            folder: RunFolder, write_model) -> dict[str, Any]:
    """After the last epoch: the kept model's final validation (and TTA), the export, the
    metrics and the plots."""
    from .report import plot_confusion, plot_curves

    model = loop.model
    metrics = _metrics(loop, config, data, feeds, finished=True)
    kept = recorder.kept_epoch or len(loop.history)
    if recorder.kept_state is not None:
        model.load_state_dict(recorder.kept_state)
    metrics["kept_epoch"] = kept
    if feeds.val is not None:
        final = loop.validate()
        metrics.update({"val_accuracy": final.accuracy, "val_top5": final.top5, "val_loss": final.loss,
                        "per_class_accuracy": final.per_class, "confusion_matrix": final.confusion})
        if config.tta:
            network = loop.eval_network if feeds.network is None else model
            tta = loop.validate(tta=True, flip=config.hflip, batches=feeds.val_images, network=network)
            metrics.update({"val_accuracy_tta": tta.accuracy, "val_top5_tta": tta.top5})
    if adaptation is not None:
        from .adaptation import finish_adaptation

        finish_adaptation(adaptation, config, loop, feeds, gap_before, metrics, folder.path(ADAPTATION_FILE))
    folder.write_outputs(True, lambda path: write_model(path, None, kept, val_accuracy=metrics.get("val_accuracy")),
                         metrics)
    plot_curves(metrics["history"], folder.path("curves.png"), title=f"{config.backbone} ({config.strategy})")
    if "confusion_matrix" in metrics:
        plot_confusion(metrics["confusion_matrix"], data.classes, folder.path("confusion_matrix.png"))
    return metrics


def _interrupted(e: KeyboardInterrupt, loop: Loop, folder: RunFolder) -> Interrupted:
    """What an interrupt leaves, said truthfully."""
    signal_name = getattr(e, "signal_name", "SIGINT")
    how = "interrupted" if signal_name == "SIGINT" else f"stopped by {signal_name}"
    resume = f"`zoo-adapt finetune --out {folder.out} --resume`"
    if not folder.has_checkpoint():
        folder.discard()
        return Interrupted(f"{how} in epoch 1, before the first checkpoint: nothing can be resumed yet, and "
                           f"{folder.out} was cleaned up; start the run again", signal_name)
    if loop.epoch >= len(loop.plan):
        return Interrupted(f"{how} while writing the results; {folder.path(CHECKPOINT)} holds all "
                           f"{len(loop.plan)} epochs: {resume} writes them", signal_name)
    return Interrupted(f"{how} in epoch {loop.epoch + 1}; {folder.path(CHECKPOINT)} holds epoch {loop.epoch} of "
                       f"{len(loop.plan)}: continue with {resume}", signal_name)


def _check_resumable(stored: dict[str, Any], config: FinetuneConfig, classes: list[str], folder: RunFolder) -> None:
    """A checkpoint is only continued with the options it was made with."""
    if stored.get("backbone") != config.backbone or stored.get("classes") != classes:
        raise ZooAdaptError(f"{folder.path(CHECKPOINT)} is of another run (backbone {stored.get('backbone')!r}, "
                            f"{len(stored.get('classes') or [])} classes); resume with the options it was started "
                            "with, or start again with --overwrite")
    made_with, now = stored.get("config", {}), resolved_values(config)
    meta = declarations()
    changed = [name for name in set(made_with) | set(now) if meta[name].metadata["resume"] == "fixed"
               and made_with.get(name) != now.get(name)]
    if config.epochs < len(stored.get("history", [])):
        raise ZooAdaptError(f"--epochs {config.epochs}: the run already has {len(stored['history'])} epochs")
    if changed:
        name = sorted(changed)[0]
        raise ZooAdaptError(f"{folder.path(CHECKPOINT)} was made with --{name.replace('_', '-')} "
                            f"{made_with.get(name)!r}, not {now.get(name)!r}; a resumed run keeps the options it "
                            "was started with (start a new run with another --out to change them)")


def _machine_notes(config: FinetuneConfig) -> list[str]:
    notes = [f"zoo-adapt finetune options, every value resolved; rerun with "
             f"`zoo-adapt finetune --config {Path(config.out) / 'config.toml'} --out NEW_FOLDER`"]
    if config.workers is None:
        notes.append("workers: not set, chosen per machine")
    if config.weights is None:
        notes.append("weights: not set, the backbone's default pretrained weights")
    return notes


def _metrics(loop: Loop, config: FinetuneConfig, data, feeds, finished: bool) -> dict[str, Any]:
    history = [r.to_dict() for r in loop.history]
    return {
        "backbone": config.backbone, "strategy": config.strategy, "data": data.where,
        "classes": data.classes, "num_train": feeds.train.num_samples,
        "num_val": feeds.val.num_samples if feeds.val is not None else 0,
        "device": str(loop.device), "precision": "bf16" if loop.amp_dtype is not None else "fp32",
        "epochs_done": len(history), "epochs": len(loop.plan), "checkpoint_epoch": loop.epoch,
        "best_epoch": loop.best[1] if loop.best else None,
        "best_val_accuracy": loop.best[0] if loop.best else None,
        "images_per_second": (sum(r["images_per_second"] for r in history) / len(history)) if history else None,
        "history": history, "finished": finished,
    }
