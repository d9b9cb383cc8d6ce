"""A fine-tuning job: data in, a run folder out (model.safetensors, metrics.json,
history.csv, plots, config.toml, checkpoint.pt, a model card; optionally the error
analysis, model.onnx and tracker logs). `zoo-adapt finetune` is a thin layer over `finetune()`.

The job checks everything (options, data, model, checkpoint) before it writes anything,
builds the pieces (batch sources, optimizer, schedule, callbacks), hands them to the
loop (`zoo_adapt.engine.Loop`), and writes the results. A run is a list of epochs, each
with a freeze boundary from the strategy; one optimizer holds every parameter with its
layer group's rate, and the schedule restarts (warm-up included) whenever the boundary
moves. Under torchrun every process runs the job on its shard of the data and rank 0
writes the folder (`zoo_adapt.distributed`).
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import distributed
from .config import FinetuneConfig, declarations, resolved_values
from .demo import IMAGE_SIZE as DEMO_IMAGE_SIZE
from .device import prepare, resolve_device
from .engine import (Callback, Compile, EarlyStop, Loop, MixedPrecision, Progress, WeightAverage, freeze_plan,
                     seed_everything)
from .engine.loop import MultiLabel, SingleLabel
from .errors import ZooAdaptError
from .export import export_model
from .inputs import FeedMaker, is_demo, load_datasets
from .models import create_model, num_classes_of, swap_head
from .optim import make_optimizer, param_groups, stage_schedule
from .pipeline import default_workers
from .run_notes import (TIE_IMAGES, imbalance_warnings, machine_notes, recipes_line, selection, start_warnings,
                        validation_metrics)
from .run_folder import (ADAPTATION_FILE, CHECKPOINT, CHECKPOINT_FORMAT, MODEL_FILE, EpochRecorder, RunFolder,
                         config_text)
from .transforms import run_normalization


@dataclass
class FinetuneResult:
    model: torch.nn.Module  # the kept epoch's weights
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    out: Path

    @property
    def kept_epoch(self) -> int:
        return self.metrics["kept_epoch"]




class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run, after the folder was left resumable (or clean)."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.message, self.signal_name = message, signal_name


def resolve(config: FinetuneConfig, image_size: int) -> FinetuneConfig:
    """The options with every default that depends on the backbone or on others filled
    in, as config.toml records them."""
    lr_body = config.lr_body
    if lr_body is None and config.lr_decay is None and config.lr != "auto":  # auto: after the LR finder
        lr_body = config.head_lr / 100
    return dataclasses.replace(config, image_size=image_size, lr=config.head_lr, lr_body=lr_body)


def finetune(config: FinetuneConfig, callbacks: Sequence[Callback] = (), log: Callable[[str], None] | None = print,
             overwrite: bool = False) -> FinetuneResult:
    """Run a fine-tuning job as configured; returns the model, per-epoch history and final metrics.

    The exported model is the best epoch by validation accuracy (or the last, with
    keep='last'). Interrupting (Ctrl-C) leaves a resumable folder (or, before the first
    checkpoint, a clean one); `resume=True` continues exactly where it stopped.
    `callbacks`: more `zoo_adapt.engine.Callback` objects for the loop."""
    from .trackers import check as check_trackers

    config = with_method_options(config.validate())
    trackers = check_trackers(config.log)  # unknown names and missing packages: before anything is written
    _check_extras(config)
    procs = distributed.launched()
    device = resolve_device(distributed.device_for(config.device, procs))
    procs = distributed.start(device)
    try:
        job = Job(config, procs, device, log if procs.main else None, overwrite, trackers if procs.main else [])
        distributed.agree(procs, job.lock)
        try:
            return job.run(list(callbacks))
        finally:
            job.folder.release()
    finally:
        distributed.stop()


def _check_extras(config: FinetuneConfig) -> None:
    """What --export and --analysis need is installed (before anything is written)."""
    if "onnx" in config.export:
        from .onnx_export import require_onnx

        require_onnx()
    if config.analysis == "on":
        from .analysis import require_cams

        require_cams()


def with_method_options(config: FinetuneConfig) -> FinetuneConfig:
    """With --target-data: the method's options checked against what its plugin
    declared, defaults filled in (so config.toml records every value)."""
    if not config.adapting:
        return config
    from .methods import resolve_options

    return dataclasses.replace(config, adapt_options=resolve_options(config.adapt, config.adapt_options))


def lr_find(config: FinetuneConfig, log: Callable[[str], None] | None = print):
    """The LR finder on the model and data `config` describes (one process): returns
    the curve (`zoo_adapt.lr_find.LRCurve`) and writes lr_find.png to `config.out`."""
    from .lr_find import plot

    config.validate()
    if config.lr == "auto":
        config = dataclasses.replace(config, lr=None)
    device = resolve_device(config.device)
    job = Job(config, distributed.SINGLE, device, log, overwrite=False)
    job.prepare()
    if job.maker.wants_cache():
        job.feeds = job.maker.cached(job.data, job.feeds, job.model, job.autocast)
    curve = job.find_lr()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    c = job.config
    path = plot(curve, out / "lr_find.png", title=f"{c.backbone} ({c.strategy}, first stage): learning-rate finder")
    job.log(f"lr-find on {c.backbone}, {len(job.data.train)} training images, {c.image_size}px, strategy "
            f"{c.strategy}: {len(curve.lrs)} steps, stopped because {curve.why_stopped}")
    job.log(f"suggested head rate (--lr): {curve.suggestion:.3g} (valley); steepest descent at {curve.steepest:.3g}; "
            f"curve in {path}")
    return curve


class Job:
    """One run, phase by phase; every phase that can fail on bad input runs on all
    processes under `distributed.agree`, so they fail together."""

    def __init__(self, config: FinetuneConfig, procs: distributed.Processes, device: torch.device, log, overwrite,
                 trackers=()):
        self.config, self.procs, self.device, self.overwrite = config, procs, device, overwrite
        self.trackers = list(trackers)  # rank 0's: the other processes report nothing
        self.log = log or (lambda s: None)
        self.folder = RunFolder(config.out)

    def lock(self) -> None:
        self.folder.precheck(self.config.resume, self.overwrite)
        if self.procs.main:
            self.folder.acquire()

    def prepare(self) -> None:
        """Everything checked and built, nothing written: checkpoint, model, data, batches."""
        c, device = self.config, self.device
        prepare(device)
        self.stored = self.folder.read_checkpoint(device) if c.resume else None
        seed_everything(c.seed)
        weights = c.weights if self.stored is None else None  # a resumed run's weights are in its checkpoint
        model = create_model(c.backbone, pretrained=c.pretrained and self.stored is None, weights=weights)
        norm = model.zoo_adapt.normalization
        c = self.config = resolve(c, c.image_size or (DEMO_IMAGE_SIZE if is_demo(c) else norm.image_size))
        self.data = load_datasets(c)
        from .data import class_counts, dataset_labels

        self.counts = class_counts(dataset_labels(self.data.train), len(self.data.classes))
        if self.stored is not None:
            _check_resumable(self.stored, c, self.data.classes, self.folder, self.procs.world)
        if num_classes_of(model) != len(self.data.classes):
            seed_everything(c.seed)
            swap_head(model, len(self.data.classes))
        model.to(device)
        if c.sync_bn and self.procs.active:
            model = distributed.sync_batchnorm(model, device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        self.model = model
        amp = c.precision == "bf16" or (c.precision == "auto" and device.type == "cuda")
        self.amp = amp
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext
        self.norm = run_normalization(norm, c.image_size, c.crop_scale)  # what the export records
        self.maker = FeedMaker(c, self.norm, c.image_size, device, self.procs)
        self.feeds = self.maker.feeds(self.data)
        self.adaptation, self.gap_before = None, None
        if c.target_data:
            from .adaptation import start_adaptation

            self.adaptation, self.gap_before = start_adaptation(c, model, self.data.classes, self.maker, self.feeds,
                                                                self.autocast, self.log, self.procs)

    def run(self, callbacks: list[Callback]) -> FinetuneResult:
        distributed.agree(self.procs, self.prepare)
        if self.maker.wants_cache():
            self.feeds = self.maker.cached(self.data, self.feeds, self.model, self.autocast)
        self.lr_curve = None
        if self.config.lr == "auto":
            self.lr_curve = self.find_lr()
            self.config = resolve(dataclasses.replace(self.config, lr=self.lr_curve.suggestion),
                                  self.config.image_size)
            self.log(f"lr-find: head rate {self.config.lr:.3g} (valley; steepest descent at "
                     f"{self.lr_curve.steepest:.3g}; {self.lr_curve.why_stopped}); lr_find.png in {self.folder.out}")
        c, data, feeds, procs = self.config, self.data, self.feeds, self.procs
        batch = f"batch {c.batch_size}" + (f" per process x {procs.world} = {c.batch_size * procs.world}"
                                           if procs.active else "")
        self.log(f"{c.backbone}: {len(data.classes)} classes, {len(data.train)} training and "
                 f"{len(data.val) if data.val is not None else 0} validation images ({data.where}), "
                 f"{c.image_size}px, {batch}, {self.device}, strategy {c.strategy}; {feeds.how}")
        recipes = recipes_line(c)
        if recipes:
            self.log(f"recipes: {recipes}")
        for warning in start_warnings(c, self.stored) + imbalance_warnings(c, self.counts, data.classes):
            self.log(f"warning: {warning}")
        loop = self.loop(callbacks)
        if self.stored is not None:
            loop.load_state_dict(self.stored)
            self.log(f"resuming after epoch {loop.epoch} of {len(loop.plan)}")
        if procs.main:
            self.folder.begin(config_text(resolved_values(c), machine_notes(c)), fresh=self.stored is None)
            if self.lr_curve is not None:
                from .lr_find import plot

                plot(self.lr_curve, self.folder.path("lr_find.png"), title=f"{c.backbone}: learning-rate finder")
        if self.stored is not None:
            self.recorder.commit_outputs()  # model and metrics as the checkpoint says (a kill may have left them)
        start = time.perf_counter()
        with self.tracking.running():  # every tracker is told how the run ended
            try:
                loop.fit()
                metrics = self.finish(loop)
            except KeyboardInterrupt as e:
                raise self.interrupted(e, loop) from None
            self.tracking.publish(self.folder.out, metrics)
        metrics["train_seconds"] = time.perf_counter() - start
        return FinetuneResult(self.model, metrics["history"], metrics, self.folder.out)

    def find_lr(self):
        """The LR finder's curve on this job's model and training batches (every
        process sweeps its own shard; all take rank 0's suggestion)."""
        from .lr_find import sweep

        c = self.config
        curve = sweep(self.model, self.feeds.network or self.model, self.feeds.train, strategy=c.strategy, bn=c.bn,
                      optimizer=c.optimizer, momentum=c.momentum, weight_decay=c.weight_decay,
                      body_ratio=(c.lr_body / c.head_lr) if c.lr_body and c.lr != "auto" else 0.01,
                      lr_decay=c.lr_decay, label_smoothing=c.label_smoothing, autocast=self.autocast)
        if self.procs.active:
            import torch.distributed as dist

            chosen = [curve.suggestion]
            dist.broadcast_object_list(chosen, src=0)
            curve.suggestion = chosen[0]
        return curve

    def loop(self, callbacks: list[Callback]) -> Loop:
        from .trackers import build as build_tracker
        from .tracking import Tracking

        c, model, feeds, procs = self.config, self.model, self.feeds, self.procs
        pieces: list[Callback] = [MixedPrecision()] if self.amp else []
        if procs.active:
            pieces.append(distributed.DataParallel(procs))
        if c.compile:
            pieces.append(Compile())
        if c.random_erase > 0 or c.mixup > 0 or c.cutmix > 0:
            from .augment import BatchRecipe

            pieces.append(BatchRecipe(c.random_erase, c.mixup, c.cutmix, len(self.data.classes), c.label_smoothing))
        if c.ema:
            pieces.append(WeightAverage(c.ema))
        if c.early_stop:
            pieces.append(EarlyStop(c.early_stop))
        steps = len(feeds.train)
        extra_groups = []
        if self.adaptation is not None:
            pieces.append(self.adaptation)
            if self.adaptation.method.forwards_target:
                steps = c.steps_per_epoch or max(steps, len(self.adaptation.target))
            extra_groups = self.adaptation.method.param_groups(c.head_lr, c.weight_decay)
        plan = freeze_plan(c.strategy, c.epochs, len(model.zoo_adapt.groups), c.head_epochs, c.unfreeze_every)
        groups = param_groups(model, c.head_lr, lr_body=c.lr_body, lr_decay=c.lr_decay, weight_decay=c.weight_decay,
                              spread=c.lr_spread)
        optimizer = make_optimizer(extra_groups + groups, c.optimizer, c.momentum, fused=self.device.type == "cuda")
        self.recorder = EpochRecorder(self.folder, c.keep, {"format": CHECKPOINT_FORMAT,
                                                            "config": resolved_values(c), "backbone": c.backbone,
                                                            "classes": self.data.classes, "processes": procs.world},
                                      self.write_model, lambda finished: self.metrics(loop, finished),
                                      write=procs.main)
        self.tracking = Tracking({t.name: build_tracker(t) for t in self.trackers}, self.folder.out,
                                 resolved_values(c), self.data.classes)
        progress = [Progress(self.log)] if procs.main else []
        loop = Loop(model, train=feeds.train, val=feeds.val, classes=self.data.classes, plan=plan,
                    optimizer=optimizer, schedule=stage_schedule(plan, -(-steps // c.accumulate), c.schedule,
                                                                 c.warmup), accumulate=c.accumulate,
                    callbacks=[*pieces, self.recorder, self.tracking, *progress, *callbacks],
                    task=make_task(c, self.counts, len(self.data.train)), seed=c.seed,
                    select="val_" + c.selection_metric,
                    bn="frozen" if c.strategy == "linear-probe" else c.bn, eval_body=c.strategy == "linear-probe",
                    steps_per_epoch=steps, device=self.device, network=feeds.network,
                    tie_margin=TIE_IMAGES / len(self.data.val) if self.data.val is not None else 0.0)
        return loop

    def write_model(self, path: Path, state: dict | None, epoch: int, **extra_meta) -> Path:
        c = self.config
        if c.multi_label:
            extra_meta["multi_label"] = True
        return export_model(self.model, path, self.data.classes, c.image_size, crop_pct=self.norm.crop_pct,
                            extra={"epoch": epoch, "hflip": c.hflip, **extra_meta}, state=state)

    def finish(self, loop: Loop) -> dict[str, Any]:
        """After the last epoch: the kept model's final validation (and TTA; every process
        evaluates its shard), then, on rank 0, the export, the metrics and the plots."""
        from .report import plot_confusion, plot_curves, summary_lines

        c, model, feeds, recorder, folder = self.config, self.model, self.feeds, self.recorder, self.folder
        metrics = self.metrics(loop, finished=True)
        kept = recorder.kept_epoch or len(loop.history)
        if recorder.kept_state is not None:
            model.load_state_dict(recorder.kept_state)
        if self.adaptation is not None and self.adaptation.target_bn:  # before every final figure and the export
            layers = self.adaptation.use_target_statistics(loop)
            self.log(f"BatchNorm statistics of the {self.adaptation.num_target} target images in {layers} layers "
                     "(--target-bn target): the final figures and the export are of the target-normalised model"
                     if layers else "--target-bn target: the model has no BatchNorm layer, nothing to recompute")
        metrics["kept_epoch"] = kept
        if feeds.val is not None:
            final = loop.validate()
            metrics.update(validation_metrics(final))
            if c.tta:
                network = loop.eval_network if feeds.network is None else model
                tta = loop.validate(tta=True, flip=c.hflip, batches=feeds.val_images, network=network)
                metrics.update({"val_accuracy_tta": tta.accuracy, "val_top5_tta": tta.top5})
                if tta.multi_label:
                    metrics.update({"val_map_tta": tta.map})
                else:
                    metrics.update({"val_balanced_accuracy_tta": tta.balanced_accuracy})
        metrics["selection"] = selection(loop, c, metrics)
        if self.adaptation is not None:
            from .adaptation import finish_adaptation

            finish_adaptation(self.adaptation, c, loop, feeds, self.gap_before, metrics,
                              folder.path(ADAPTATION_FILE), write=self.procs.main)
        if not self.procs.main:
            return metrics
        chosen = {"thresholds": metrics["thresholds"]} if "thresholds" in metrics else {}
        folder.write_outputs(True, lambda path: self.write_model(path, None, kept, **chosen,
                                                                 val_accuracy=metrics.get("val_accuracy")), metrics)
        plot_curves(metrics["history"], folder.path("curves.png"), title=f"{c.backbone} ({c.strategy})", kept=kept)
        if metrics.get("confusion_matrix"):
            plot_confusion(metrics["confusion_matrix"], self.data.classes, folder.path("confusion_matrix.png"),
                           title=f"{c.backbone}, epoch {kept}: {metrics['num_val']} validation images "
                                 f"(counts; colour = share of the true class)")
        self.ship()
        for line in summary_lines(metrics, folder.out):
            self.log(line)
        return metrics

    def ship(self) -> None:
        """What the run folder carries beyond the model: the error analysis, other export
        formats, the model card and timm's config."""
        from .model_card import write_hub_files

        c, model, data, folder, device = self.config, self.model, self.data, self.folder, self.device
        workers = c.workers if c.workers is not None else default_workers(device)
        if c.analysis != "off" and data.val is not None and c.multi_label:
            self.log("error analysis skipped: it covers single-label models (per-class figures are in metrics.json)")
        elif c.analysis != "off" and data.val is not None:
            from .analysis import analyse

            analyse(model, data.val, data.classes, self.norm, c.image_size,
                    folder.path("analysis"), device, cams=c.analysis, workers=workers,
                    title=f"{c.backbone} ({c.strategy})", log=self.log)
        if "onnx" in c.export:
            from .onnx_export import export_onnx

            export_onnx(folder.path(MODEL_FILE), folder.path("model.onnx"), images=data.val, log=self.log)
        write_hub_files(folder.out, model=model, log=self.log)

    def interrupted(self, e: KeyboardInterrupt, loop: Loop) -> Interrupted:
        """What an interrupt leaves, said truthfully (rank 0 speaks for the folder)."""
        folder = self.folder
        signal_name = getattr(e, "signal_name", "SIGINT")
        how = "interrupted" if signal_name == "SIGINT" else f"stopped by {signal_name}"
        resume = f"`zoo-adapt finetune --out {folder.out} --resume`"
        if not folder.has_checkpoint():
            if self.procs.main:
                folder.discard()
            return Interrupted(f"{how} in epoch 1, before the first checkpoint: nothing can be resumed yet, and "
                               f"{folder.out} was cleaned up; start the run again", signal_name)
        if loop.epoch >= len(loop.plan):
            return Interrupted(f"{how} while writing the results; {folder.path(CHECKPOINT)} holds all "
                               f"{len(loop.plan)} epochs: {resume} writes them", signal_name)
        return Interrupted(f"{how} in epoch {loop.epoch + 1}; {folder.path(CHECKPOINT)} holds epoch {loop.epoch} "
                           f"of {len(loop.plan)}: continue with {resume}", signal_name)

    def metrics(self, loop: Loop, finished: bool) -> dict[str, Any]:
        c, data = self.config, self.data
        history = [r.to_dict() for r in loop.history]
        return {
            "backbone": c.backbone, "strategy": c.strategy, "data": data.where,
            "classes": data.classes, "num_train": len(data.train),
            "num_val": len(data.val) if data.val is not None else 0,
            "device": str(loop.device), "processes": self.procs.world, "batch_size": c.batch_size,
            "global_batch_size": c.batch_size * self.procs.world,
            "precision": "bf16" if loop.amp_dtype is not None else "fp32",
            "epochs_done": len(history), "epochs": len(loop.plan), "checkpoint_epoch": loop.epoch,
            "best_epoch": loop.best[1] if loop.best else None,
            "select_metric": loop.select,
            "best_score": loop.best[0] if loop.best else None,
            "best_val_accuracy": loop.history[loop.best[1] - 1].val_accuracy if loop.best else None,
            "class_counts_train": dict(zip(data.classes, self.counts)),
            "images_per_second": (sum(r["images_per_second"] for r in history) / len(history)) if history else None,
            "history": history, "finished": finished, "stopped_early": loop.stopped,
            "ema_decay": c.ema, "accumulate": c.accumulate,
        }


def make_task(config: FinetuneConfig, counts: list[int], num_train: int):
    """The loss and accuracy of the run: single- or multi-label, with --balance loss's
    weights from the training counts (single-label: n / (classes x count), so every
    class weighs the same in all; multi-label: negatives / positives per class)."""
    weighted = config.balance == "loss"
    if config.multi_label:
        return MultiLabel([(num_train - n) / max(n, 1) for n in counts] if weighted else None)
    weights = [num_train / (len(counts) * max(n, 1)) for n in counts] if weighted else None
    return SingleLabel(config.label_smoothing, weights)


def _check_resumable(stored: dict[str, Any], config: FinetuneConfig, classes: list[str], folder: RunFolder,
                     world: int) -> None:
    """A checkpoint is only continued with the options it was made with, by as many
    processes (another number would change the global batch)."""
    trained_by = stored.get("processes", 1)
    if trained_by != world:
        how = (f"`torchrun --nproc-per-node {trained_by} -m zoo_adapt finetune --out {folder.out} --resume`"
               if trained_by > 1 else f"`zoo-adapt finetune --out {folder.out} --resume` (without torchrun)")
        raise ZooAdaptError(f"{folder.path(CHECKPOINT)} was trained by {trained_by} process(es), not {world}; "
                            f"resume it with {how}: another number would change the global batch")
    if stored.get("backbone") != config.backbone or stored.get("classes") != classes:
        raise ZooAdaptError(f"{folder.path(CHECKPOINT)} is of another run (backbone {stored.get('backbone')!r}, "
                            f"{len(stored.get('classes') or [])} classes); resume with the options it was started "
                            "with, or start again with --overwrite")
    made_with, now = stored.get("config", {}), resolved_values(config)
    meta = declarations()
    changed = [name for name in set(made_with) | set(now) if name in meta and meta[name].metadata["resume"] == "fixed"
               and made_with.get(name) != now.get(name)]
    if config.epochs < len(stored.get("history", [])):
        raise ZooAdaptError(f"--epochs {config.epochs}: the run already has {len(stored['history'])} epochs")
    if changed:
        name = sorted(changed)[0]
        raise ZooAdaptError(f"{folder.path(CHECKPOINT)} was made with --{name.replace('_', '-')} "
                            f"{made_with.get(name)!r}, not {now.get(name)!r}; a resumed run keeps the options it "
                            "was started with (start a new run with another --out to change them)")
