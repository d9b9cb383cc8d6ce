"""A fine-tuning job: data in, a run folder out (model.safetensors, metrics.json, plots,
config.toml, checkpoint.pt). `zoo-adapt finetune` is a thin layer over `finetune()`.

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
from .engine import Callback, Compile, Loop, MixedPrecision, Progress, freeze_plan, seed_everything
from .engine.loop import MultiLabel, SingleLabel
from .errors import ZooAdaptError
from .export import export_model
from .inputs import FeedMaker, is_demo, load_datasets
from .models import create_model, num_classes_of, swap_head
from .optim import make_optimizer, param_groups, stage_schedule
from .run_folder import ADAPTATION_FILE, CHECKPOINT, CHECKPOINT_FORMAT, EpochRecorder, RunFolder, config_text


@dataclass
class FinetuneResult:
    model: torch.nn.Module  # the kept epoch's weights
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    out: Path

    @property
    def kept_epoch(self) -> int:
        return self.metrics["kept_epoch"]


TIE_IMAGES = 2  # epochs this many validation images (or fewer) apart count as tied: the later is kept


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
    config.validate()
    procs = distributed.launched()
    device = resolve_device(distributed.device_for(config.device, procs))
    procs = distributed.start(device)
    try:
        job = Job(config, procs, device, log if procs.main else None, overwrite)
        distributed.agree(procs, job.lock)
        try:
            return job.run(list(callbacks))
        finally:
            job.folder.release()
    finally:
        distributed.stop()


class Job:
    """One run, phase by phase; every phase that can fail on bad input runs on all
    processes under `distributed.agree`, so they fail together."""

    def __init__(self, config: FinetuneConfig, procs: distributed.Processes, device: torch.device, log, overwrite):
        self.config, self.procs, self.device, self.overwrite = config, procs, device, overwrite
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
        self.maker = FeedMaker(c, norm, c.image_size, device, self.procs)
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
        c, data, feeds, procs = self.config, self.data, self.feeds, self.procs
        batch = f"batch {c.batch_size}" + (f" per process x {procs.world} = {c.batch_size * procs.world}"
                                           if procs.active else "")
        self.log(f"{c.backbone}: {len(data.classes)} classes, {len(data.train)} training and "
                 f"{len(data.val) if data.val is not None else 0} validation images ({data.where}), "
                 f"{c.image_size}px, {batch}, {self.device}, strategy {c.strategy}; {feeds.how}")
        for warning in _warnings(c, self.stored) + _imbalance_warnings(c, self.counts, data.classes):
            self.log(f"warning: {warning}")
        loop = self.loop(callbacks)
        if self.stored is not None:
            loop.load_state_dict(self.stored)
            self.log(f"resuming after epoch {loop.epoch} of {len(loop.plan)}")
        if procs.main:
            self.folder.begin(config_text(resolved_values(c), _machine_notes(c)), fresh=self.stored is None)
        if self.stored is not None:
            self.recorder.commit_outputs()  # model and metrics as the checkpoint says (a kill may have left them)
        start = time.perf_counter()
        try:
            loop.fit()
            metrics = self.finish(loop)
        except KeyboardInterrupt as e:
            raise self.interrupted(e, loop) from None
        metrics["train_seconds"] = time.perf_counter() - start
        return FinetuneResult(self.model, metrics["history"], metrics, self.folder.out)

    def loop(self, callbacks: list[Callback]) -> Loop:
        c, model, feeds, procs = self.config, self.model, self.feeds, self.procs
        pieces: list[Callback] = [MixedPrecision()] if self.amp else []
        if procs.active:
            pieces.append(distributed.DataParallel(procs))
        if c.compile:
            pieces.append(Compile())
        steps = len(feeds.train)
        extra_groups = []
        if self.adaptation is not None:
            pieces.append(self.adaptation)
            steps = c.steps_per_epoch or max(steps, len(self.adaptation.target))
            extra_groups = self.adaptation.method.param_groups(c.head_lr, c.weight_decay)
        plan = freeze_plan(c.strategy, c.epochs, len(model.zoo_adapt.groups), c.head_epochs, c.unfreeze_every)
        groups = param_groups(model, c.head_lr, lr_body=c.lr_body, lr_decay=c.lr_decay, weight_decay=c.weight_decay)
        optimizer = make_optimizer(extra_groups + groups, c.optimizer, c.momentum, fused=self.device.type == "cuda")
        self.recorder = EpochRecorder(self.folder, c.keep, {"format": CHECKPOINT_FORMAT,
                                                            "config": resolved_values(c), "backbone": c.backbone,
                                                            "classes": self.data.classes, "processes": procs.world},
                                      self.write_model, lambda finished: self.metrics(loop, finished),
                                      write=procs.main)
        progress = [Progress(self.log)] if procs.main else []
        loop = Loop(model, train=feeds.train, val=feeds.val, classes=self.data.classes, plan=plan,
                    optimizer=optimizer, schedule=stage_schedule(plan, steps, c.schedule, c.warmup),
                    callbacks=[*pieces, self.recorder, *progress, *callbacks],
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
        return export_model(self.model, path, self.data.classes, c.image_size,
                            {"epoch": epoch, "hflip": c.hflip, **extra_meta}, state=state)

    def finish(self, loop: Loop) -> dict[str, Any]:
        """After the last epoch: the kept model's final validation (and TTA; every process
        evaluates its shard), then, on rank 0, the export, the metrics and the plots."""
        from .report import plot_confusion, plot_curves, summary_lines

        c, model, feeds, recorder, folder = self.config, self.model, self.feeds, self.recorder, self.folder
        metrics = self.metrics(loop, finished=True)
        kept = recorder.kept_epoch or len(loop.history)
        if recorder.kept_state is not None:
            model.load_state_dict(recorder.kept_state)
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
        extra_panels = ("domain_accuracy",) if self.adaptation is not None else ()
        plot_curves(metrics["history"], folder.path("curves.png"), title=f"{c.backbone} ({c.strategy})",
                    extra=extra_panels, kept=kept)
        if metrics.get("confusion_matrix"):
            plot_confusion(metrics["confusion_matrix"], self.data.classes, folder.path("confusion_matrix.png"),
                           title=f"{c.backbone}, epoch {kept}: {metrics['num_val']} validation images "
                                 f"(counts; colour = share of the true class)")
        for line in summary_lines(metrics, folder.out):
            self.log(line)
        return metrics

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
            "history": history, "finished": finished,
        }


def _warnings(c: FinetuneConfig, stored: dict[str, Any] | None) -> list[str]:
    """Defaults that silently do something else than a user expects on small runs."""
    out = []
    if c.strategy == "two-stage" and c.epochs <= c.head_epochs:
        out.append(f"two-stage with --epochs {c.epochs} and --head-epochs {c.head_epochs} trains the head alone: "
                   f"the body never unfreezes (give --epochs {c.head_epochs + 1} or more, or --strategy linear-probe)")
    planned = (stored or {}).get("config", {}).get("epochs")
    if planned is not None and c.epochs > planned:
        out.append(f"--epochs {c.epochs} extends a run planned for {planned}: the learning-rate schedule of the last "
                   "stage is stretched over the new length, so the rate rises again from where it was; for a clean "
                   "schedule start a new run")
    return out


def make_task(config: FinetuneConfig, counts: list[int], num_train: int):
    """The loss and accuracy of the run: single- or multi-label, with --balance loss's
    weights from the training counts (single-label: n / (classes x count), so every
    class weighs the same in all; multi-label: negatives / positives per class)."""
    weighted = config.balance == "loss"
    if config.multi_label:
        return MultiLabel([(num_train - n) / max(n, 1) for n in counts] if weighted else None)
    weights = [num_train / (len(counts) * max(n, 1)) for n in counts] if weighted else None
    return SingleLabel(config.label_smoothing, weights)


def validation_metrics(final) -> dict[str, Any]:
    """What metrics.json holds of the kept model's validation."""
    out = {"val_accuracy": final.accuracy, "val_loss": final.loss, "val_macro_f1": final.macro_f1,
           "per_class_precision": final.precision, "per_class_recall": final.recall, "per_class_f1": final.f1}
    if final.multi_label:
        out.update({"val_map": final.map, "val_micro_f1": final.micro_f1, "per_class_ap": final.per_class,
                    "thresholds": final.thresholds})
    else:
        out.update({"val_top5": final.top5, "val_balanced_accuracy": final.balanced_accuracy,
                    "per_class_accuracy": final.per_class, "confusion_matrix": final.confusion})
    return out


IMBALANCE_RATIO = 10


def _imbalance_warnings(c: FinetuneConfig, counts: list[int], classes: list[str]) -> list[str]:
    """Classes far apart in size, with nothing done about it."""
    present = [n for n in counts if n]
    if c.balance != "none" or not present or max(present) <= IMBALANCE_RATIO * min(present):
        return []
    big, small = counts.index(max(present)), counts.index(min(present))
    return [f"imbalanced classes: {classes[big]!r} has {counts[big]} training images, {classes[small]!r} only "
            f"{counts[small]} (more than {IMBALANCE_RATIO}x); consider --balance sampler or loss and "
            "--select-metric balanced_accuracy (or macro_f1)"]


def selection(loop: Loop, config: FinetuneConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """Which epoch was kept and why, and whether its lead is within noise: below one
    standard error of an accuracy measured on n images, sqrt(p (1 - p) / n)."""
    kept, last = metrics["kept_epoch"], len(loop.history)
    if config.keep == "last" or loop.best is None:
        return {"rule": "last", "why": "the last epoch" + (", --keep last" if config.keep == "last" else
                                                          ": no validation score")}
    by = loop.select.replace("_", " ")
    rule = {"rule": "best", "select": loop.select, "tie_images": TIE_IMAGES,
            "why": f"the best by {by}; epochs within {TIE_IMAGES} validation images count as tied, the later kept"}
    n = metrics.get("num_val") or 0
    kept_score, last_score = loop.best[0], loop.history[-1].get(loop.select)
    if kept != last and n and last_score is not None:
        lead = kept_score - last_score
        noise = (kept_score * (1 - kept_score) / n) ** 0.5
        rule["lead_over_last"] = lead
        if lead < noise:
            rule["note"] = (f"the kept epoch {kept} leads the last epoch {last} by {lead:.1%} ({round(lead * n)} of "
                            f"{n} validation images), within the noise of so few images (one standard error: "
                            f"{noise:.1%}); --keep last exports the last epoch")
    return rule


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


def _machine_notes(config: FinetuneConfig) -> list[str]:
    notes = [f"zoo-adapt finetune options, every value resolved; rerun with "
             f"`zoo-adapt finetune --config {Path(config.out) / 'config.toml'} --out NEW_FOLDER`"]
    if config.workers is None:
        notes.append("workers: not set, chosen per machine")
    if config.weights is None:
        notes.append("weights: not set, the backbone's default pretrained weights")
    return notes
