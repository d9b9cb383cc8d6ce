"""A fine-tuning job: data in, a run folder out (model.safetensors, metrics.json,
history.csv, plots, config.toml, checkpoint.pt, a model card; optionally the error
analysis, model.onnx and tracker logs). `zoo-adapt finetune` is a thin layer over `finetune()`.

The job runs in explicit phases, each taking what the one before returned:

1. `prepare`: everything checked and built, nothing written (the checkpoint to resume,
   the model, the data, the batch sources, the runtime) -> `Prepared`;
   `with_cached_features` swaps a linear probe's image batches for cached features and
   `with_found_lr` runs the LR finder for `--lr auto`;
2. `build`: the optimizer, schedule and callbacks around the loop -> `Built`;
3. `begin`: the run folder is written for the first time (config.toml);
4. the loop's epochs (`Loop.fit`), each leaving a checkpoint;
5. `finish`: the kept model's final validation, the export, the metrics and plots,
   and `ship`: the error analysis, other formats and the model card.

A run is a list of epochs, each with a freeze boundary from the strategy; one optimizer
holds every parameter with its layer group's rate, and the schedule restarts (warm-up
included) whenever the boundary moves. Under torchrun every process runs the job on
its shard of the data and rank 0 writes the folder (`zoo_adapt.engine.distributed`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo_adapt.adapt.callback import Adaptation
from zoo_adapt.data.demo import IMAGE_SIZE as DEMO_IMAGE_SIZE
from zoo_adapt.data.folders import class_counts, dataset_labels
from zoo_adapt.data.transforms import run_normalization
from zoo_adapt.engine import distributed
from zoo_adapt.engine.batch_recipes import BatchRecipe
from zoo_adapt.engine.callbacks import Callback, Compile, EarlyStop, MixedPrecision, Progress, WeightAverage
from zoo_adapt.engine.device import autocast_dtype, prepare_device, resolve_device
from zoo_adapt.engine.loop import Loop
from zoo_adapt.engine.lr_finder import LRCurve, sweep
from zoo_adapt.engine.processes import SINGLE, Processes
from zoo_adapt.engine.runtime import Runtime
from zoo_adapt.engine.tasks import MultiLabel, SingleLabel
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.files import write_text
from zoo_adapt.job.adaptation import finish_adaptation, start_adaptation
from zoo_adapt.job.config import FinetuneConfig, declarations, resolved_values
from zoo_adapt.job.folds import cross_validate
from zoo_adapt.job.inputs import Datasets, FeedMaker, Feeds, is_demo, load_datasets
from zoo_adapt.job.rank import choose_backbone
from zoo_adapt.job.rank_options import AUTO
from zoo_adapt.job.run_folder import (
    ADAPTATION_FILE,
    CALIBRATION_PLOT,
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    METRICS_FILE,
    MODEL_FILE,
    RANK_FILE,
    EpochRecorder,
    RunFolder,
    config_text,
)
from zoo_adapt.job.run_notes import (
    TIE_IMAGES,
    calibrate,
    check_calibration,
    imbalance_warnings,
    machine_notes,
    recipes_line,
    run_metrics,
    selection,
    start_warnings,
    tta_metrics,
    validation_metrics,
)
from zoo_adapt.job.shipping import ship
from zoo_adapt.job.stopping import interrupted, lost_peer
from zoo_adapt.job.tracking import Tracking
from zoo_adapt.metrics.scores import Evaluation
from zoo_adapt.model.build import create_model, grad_checkpointing, num_classes_of, swap_head
from zoo_adapt.model.optim import make_optimizer, param_groups, schedule_shape
from zoo_adapt.model.recipes import freeze_plan, stage_schedule
from zoo_adapt.report import plot_confusion, plot_curves, plot_lr_curve, plot_reliability, summary_lines
from zoo_adapt.seeds import seed_everything
from zoo_adapt.ship.analysis import require_cams
from zoo_adapt.ship.export import export_model, load_model
from zoo_adapt.ship.onnx_export import require_onnx
from zoo_adapt.zoo.backbone import Normalization, backbone_of
from zoo_adapt.zoo.methods import resolve_options
from zoo_adapt.zoo.trackers import TrackerInfo, build_tracker
from zoo_adapt.zoo.trackers import check as check_trackers

Log = Callable[[str], None]


@dataclass
class FinetuneResult:
    model: nn.Module  # the kept epoch's weights
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    out: Path
    validation: Evaluation | None = None  # the kept model's final validation, image by image

    @property
    def kept_epoch(self) -> int:
        return self.metrics["kept_epoch"]


@dataclass(frozen=True)
class Prepared:
    """What `Job.prepare` checked and built, before anything is written."""

    config: FinetuneConfig  # every default resolved, as config.toml records it
    model: nn.Module  # the described model, on the device, head swapped
    data: Datasets
    counts: list[int]  # training images per class
    norm: Normalization  # the backbone's at the run's size and eval crop: what the export records
    runtime: Runtime
    maker: FeedMaker
    feeds: Feeds
    stored: dict[str, Any] | None  # the checkpoint a resumed run continues
    adaptation: Adaptation | None = None  # with --target-data
    gap_before: float | None = None  # the domain gap before training (rank 0)


@dataclass(frozen=True)
class Built:
    """The loop of a run with the callbacks the job reads after it."""

    loop: Loop
    recorder: EpochRecorder
    tracking: Tracking


def resolve(config: FinetuneConfig, image_size: int) -> FinetuneConfig:
    """The options with every default that depends on the backbone or on others filled
    in, as config.toml records them."""
    lr_body = config.lr_body
    if lr_body is None and config.lr_decay is None and config.lr != "auto":  # auto: after the LR finder
        lr_body = config.head_lr / 100
    return dataclasses.replace(
        config,
        image_size=image_size,
        lr=config.head_lr,
        lr_body=lr_body,
        val_split=None if config.folds else config.held_out_fraction,
        folds_export=(config.folds_export or "refit") if config.folds and config.fold is None else None,
    )


def finetune(
    config: FinetuneConfig, callbacks: Sequence[Callback] = (), log: Log | None = print, overwrite: bool = False
) -> FinetuneResult:
    """Run a fine-tuning job as configured; returns the model, per-epoch history and final metrics.

    The exported model is the best epoch by validation accuracy (or the last, with
    keep='last'). Interrupting (Ctrl-C) leaves a resumable folder (or, before the first
    checkpoint, a clean one); `resume=True` continues exactly where it stopped.
    `callbacks`: more `zoo_adapt.Callback` objects for the loop. `backbone='auto'`
    ranks the backbones first (`zoo_adapt.rank`; or reads `rank_from`) and fine-tunes
    the recommendation, recording the ranking (rank.json) and the choice (config.toml).

    With `folds` (and no `fold`): K-fold cross-validation, each fold a run of its own in
    OUT/fold-k/ (zoo_adapt.job.folds); the result is then the shipped model's."""
    config = with_method_options(config.validate())
    trackers = check_trackers(config.log)  # unknown names and missing packages: before anything is written
    _check_extras(config)
    procs = distributed.launched()
    ranking = None
    if config.backbone == AUTO:
        if procs.active and not config.rank_from:
            raise ZooAdaptError(
                "--backbone auto under torchrun needs --rank-from: run `zoo-adapt rank` first, then pass its rank.json"
            )
        RunFolder(config.out).precheck(config.resume, overwrite)  # before minutes of ranking
        config, ranking = choose_backbone(config, log if procs.main else None)
    device = resolve_device(distributed.device_for(config.device, procs))
    autocast_dtype(config.precision, device)  # fp16 on a CPU: refused before anything is built
    procs = distributed.start(device)
    speak = log if procs.main else None

    def run(
        one: FinetuneConfig,
        more: Sequence[Callback] = (),
        memo: dict | None = None,
        again: bool = overwrite,
        say: Log | None = speak,
    ) -> FinetuneResult:
        job = Job(
            one,
            procs,
            device,
            say if procs.main else None,
            again,
            trackers if procs.main else [],
            features=memo,
            ranking=ranking,
        )
        distributed.agree(procs, job.lock)
        try:
            done = job.folder.finished_epochs() if one.resume else None
            if done is not None and one.epochs == done:
                return job.already_finished(done)
            return job.run([*callbacks, *more])
        finally:
            job.folder.release()

    try:
        if config.folds and config.fold is None:
            return cross_validate(config, run, speak, overwrite, procs, device)
        return run(config)
    finally:
        distributed.stop()


def _check_extras(config: FinetuneConfig) -> None:
    """What --export and --analysis need is installed (before anything is written)."""
    if "onnx" in config.export:
        require_onnx()
    if config.analysis == "on":
        require_cams()


def with_method_options(config: FinetuneConfig) -> FinetuneConfig:
    """With --target-data: the method's options checked against what its plugin
    declared, defaults filled in (so config.toml records every value)."""
    if not config.adapting:
        return config
    return dataclasses.replace(config, adapt_options=resolve_options(config.adapt, config.adapt_options))


def lr_find(config: FinetuneConfig, log: Log | None = print) -> LRCurve:
    """The LR finder on the model and data `config` describes (one process): returns
    the curve and writes lr_find.png to `config.out`."""
    config.validate()
    if config.backbone == AUTO:
        raise ZooAdaptError("lr-find needs a backbone name, not auto (zoo-adapt rank recommends one)")
    if config.lr == "auto":
        config = dataclasses.replace(config, lr=None)
    device = resolve_device(config.device)
    job = Job(config, SINGLE, device, log, overwrite=False)
    prepared = job.with_cached_features(job.prepare())
    curve = job.find_lr(prepared)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    c = prepared.config
    path = plot_lr_curve(
        curve, out / "lr_find.png", title=f"{c.backbone} ({c.strategy}, first stage): learning-rate finder"
    )
    job.log(
        f"lr-find on {c.backbone}, {len(prepared.data.train)} training images, {c.image_size}px, strategy "
        f"{c.strategy}: {len(curve.lrs)} steps, stopped because {curve.why_stopped}"
    )
    job.log(
        f"suggested head rate (--lr): {curve.suggestion:.3g} (valley); steepest descent at {curve.steepest:.3g}; "
        f"curve in {path}"
    )
    return curve


class Job:
    """One run, phase by phase (see the module doc); every phase that can fail on bad
    input runs on all processes under `distributed.agree`, so they fail together."""

    def __init__(
        self,
        config: FinetuneConfig,
        procs: Processes,
        device: torch.device,
        log: Log | None,
        overwrite: bool,
        trackers: Sequence[TrackerInfo] = (),
        features: dict | None = None,
        ranking: dict[str, Any] | None = None,
    ):
        self.config, self.procs, self.device, self.overwrite = config, procs, device, overwrite
        self.ranking = ranking  # --backbone auto: the ranking that chose the backbone (rank.json)
        self.trackers = list(trackers)  # rank 0's: the other processes report nothing
        self.log: Log = log or (lambda s: None)
        self.folder = RunFolder(config.out)
        self.features = features  # --folds: the training images' cached features, shared by the folds' runs
        self.evaluations: dict[str, Evaluation] = {}  # the final validation ("final"), for the caller

    def lock(self) -> None:
        self.folder.precheck(self.config.resume, self.overwrite)
        if self.procs.main:
            self.folder.acquire()

    # -- phase 1: check and build, write nothing -----------------------------------
    def prepare(self) -> Prepared:
        """Everything checked and built, nothing written: checkpoint, model, data, batches."""
        c, device = self.config, self.device
        prepare_device(device)
        stored = self.folder.read_checkpoint(device) if c.resume else None
        seed_everything(c.seed)
        weights = c.weights if stored is None else None  # a resumed run's weights are in its checkpoint
        model = create_model(
            c.backbone,
            pretrained=c.pretrained and stored is None,
            weights=weights,
            drop_path=c.drop_path,
            in_chans=c.in_chans,
        )
        if c.grad_checkpointing:
            grad_checkpointing(model)
        backbone_norm = backbone_of(model).built_normalization
        size = c.image_size or (DEMO_IMAGE_SIZE if is_demo(c) else backbone_norm.image_size)
        c = resolve(c, size)
        data = load_datasets(c)
        check_calibration(c, dataset_labels(data.val) if data.val is not None else [], len(data.classes))
        counts = class_counts(dataset_labels(data.train), len(data.classes))
        if stored is not None:
            _check_resumable(stored, c, data.classes, self.folder, self.procs.world)
            # the run's provenance, not "None" from the weightless rebuild: older checkpoints lack it
            keep_provenance(model, stored.get("pretrained_weights", self.folder.model_provenance()))
        if num_classes_of(model) != len(data.classes):
            seed_everything(c.seed)
            swap_head(model, len(data.classes))
        model.to(device)
        if c.sync_bn and self.procs.active:
            model = distributed.sync_batchnorm(model, device)
        cuda = device.type == "cuda"
        if cuda:
            model.to(memory_format=torch.channels_last)
        runtime = Runtime(
            device, world=self.procs.world, autocast_dtype=autocast_dtype(c.precision, device), channels_last=cuda
        )
        norm = run_normalization(backbone_norm, size, c.crop_scale)
        maker = FeedMaker(c, norm, runtime, self.procs)
        feeds = maker.feeds(data)
        prepared = Prepared(c, model, data, counts, norm, runtime, maker, feeds, stored)
        if c.target_data:
            adaptation, gap = start_adaptation(c, model, data.classes, maker, feeds, self.log, self.procs)
            prepared = dataclasses.replace(prepared, adaptation=adaptation, gap_before=gap)
        return prepared

    def with_cached_features(self, prepared: Prepared) -> Prepared:
        """A linear probe trains its head on the frozen body's features, computed once."""
        if not prepared.maker.wants_cache():
            return prepared
        feeds = prepared.maker.cached(prepared.data, prepared.feeds, prepared.model, self.features)
        return dataclasses.replace(prepared, feeds=feeds)

    def find_lr(self, prepared: Prepared) -> LRCurve:
        """The LR finder's curve on the prepared model and training batches (every
        process sweeps its own shard; all take rank 0's suggestion)."""
        c = prepared.config
        curve = sweep(
            prepared.model,
            prepared.feeds.network or prepared.model,
            prepared.feeds.train,
            strategy=c.strategy,
            bn=c.bn,
            optimizer=c.optimizer,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            body_ratio=(c.lr_body / c.head_lr) if c.lr_body and c.lr != "auto" else 0.01,
            lr_decay=c.lr_decay,
            label_smoothing=c.label_smoothing,
            autocast=prepared.runtime.autocast,
            scaler=torch.amp.GradScaler(self.device.type) if prepared.runtime.autocast_dtype == torch.float16 else None,
        )
        curve.suggestion = distributed.broadcast(curve.suggestion, self.procs)
        return curve

    def with_found_lr(self, prepared: Prepared, curve: LRCurve) -> Prepared:
        """--lr auto: the finder's suggestion as the head rate, and the rates that follow from it."""
        c = resolve(dataclasses.replace(prepared.config, lr=curve.suggestion), prepared.norm.image_size)
        self.log(
            f"lr-find: head rate {c.lr:.3g} (valley; steepest descent at {curve.steepest:.3g}; "
            f"{curve.why_stopped}); lr_find.png in {self.folder.out}"
        )
        return dataclasses.replace(prepared, config=c)

    # -- phase 2: the loop and its callbacks ---------------------------------------
    def build(self, prepared: Prepared, callbacks: Sequence[Callback]) -> Built:
        c, model, feeds, procs = prepared.config, prepared.model, prepared.feeds, self.procs
        runtime = prepared.runtime
        pieces: list[Callback] = []
        if runtime.autocast_dtype is not None:
            pieces.append(MixedPrecision(runtime.autocast_dtype))
        if procs.active:
            pieces.append(distributed.DataParallel(procs))
        if c.compile:
            pieces.append(Compile())
        if c.random_erase > 0 or c.mixup > 0 or c.cutmix > 0:
            pieces.append(BatchRecipe(c.random_erase, c.mixup, c.cutmix, len(prepared.data.classes), c.label_smoothing))
        if c.ema:
            pieces.append(WeightAverage(c.ema))
        if c.early_stop:
            pieces.append(EarlyStop(c.early_stop))
        steps = len(feeds.train)
        extra_groups = []
        adaptation = prepared.adaptation
        if adaptation is not None:
            pieces.append(adaptation)
            if adaptation.method.forwards_target:
                steps = c.steps_per_epoch or max(steps, len(adaptation.target))
            extra_groups = adaptation.method.param_groups(c.head_lr, c.weight_decay)
        plan = freeze_plan(c.strategy, c.epochs, len(backbone_of(model).built_groups), c.head_epochs, c.unfreeze_every)
        groups = param_groups(
            model, c.head_lr, lr_body=c.lr_body, lr_decay=c.lr_decay, weight_decay=c.weight_decay, spread=c.lr_spread
        )
        optimizer = make_optimizer(extra_groups + groups, c.optimizer, c.momentum, fused=self.device.type == "cuda")
        recorder = EpochRecorder(
            self.folder,
            c.keep,
            {
                "format": CHECKPOINT_FORMAT,
                "config": resolved_values(c),
                "backbone": c.backbone,
                "classes": prepared.data.classes,
                "processes": procs.world,
                "pretrained_weights": str(backbone_of(model).initial_weights),
            },
            lambda path, state, epoch: self.write_model(prepared, path, state, epoch),
            lambda loop, finished: run_metrics(c, prepared.data, prepared.counts, loop, self.procs.world, finished),
            write=procs.main,
        )
        tracking = Tracking(
            {t.name: build_tracker(t) for t in self.trackers},
            self.folder.out,
            resolved_values(c),
            prepared.data.classes,
            log=self.log,
        )
        progress = [Progress(self.log)] if procs.main else []
        num_val = len(prepared.data.val) if prepared.data.val is not None else 0
        loop = Loop(
            model,
            train=feeds.train,
            val=feeds.val,
            classes=prepared.data.classes,
            plan=plan,
            optimizer=optimizer,
            schedule=stage_schedule(plan, -(-steps // c.accumulate), c.schedule, c.warmup, schedule_shape),
            accumulate=c.accumulate,
            clip_grad=c.clip_grad,
            callbacks=[*pieces, recorder, tracking, *progress, *callbacks],
            task=make_task(c, prepared.counts, len(prepared.data.train)),
            seed=c.seed,
            select="val_" + c.selection_metric,
            bn="frozen" if c.strategy == "linear-probe" else c.bn,
            eval_body=c.strategy == "linear-probe",
            steps_per_epoch=steps,
            runtime=runtime,
            network=feeds.network,
            tie_margin=TIE_IMAGES / num_val if num_val else 0.0,
        )
        return Built(loop, recorder, tracking)

    # -- the whole run ---------------------------------------------------------------
    def run(self, callbacks: Sequence[Callback]) -> FinetuneResult:
        prepared = self.with_cached_features(distributed.agree(self.procs, self.prepare))
        curve = None
        if self.config.lr == "auto":
            curve = self.find_lr(prepared)
            prepared = self.with_found_lr(prepared, curve)
        self.announce(prepared)
        built = self.build(prepared, callbacks)
        loop = built.loop
        if prepared.stored is not None:
            loop.load_state_dict(prepared.stored)
            self.log(f"resuming after epoch {loop.epoch} of {len(loop.plan)}")
        self.begin(prepared, curve)
        if prepared.stored is not None:
            built.recorder.commit_outputs()  # model and metrics as the checkpoint says (a kill may have left them)
        start = time.perf_counter()
        with built.tracking.running():  # every tracker is told how the run ended
            try:
                loop.fit()
                metrics = self.finish(prepared, built)
            except KeyboardInterrupt as e:
                raise interrupted(self.folder, self.procs.main, e, loop) from None
            except Exception as e:
                if self.procs.active and distributed.peer_lost(e):
                    raise lost_peer(self.folder, e, loop) from e
                raise
            built.tracking.publish(self.folder.out, metrics)
        metrics["train_seconds"] = time.perf_counter() - start
        return FinetuneResult(
            prepared.model, metrics["history"], metrics, self.folder.out, self.evaluations.get("final")
        )

    def already_finished(self, epochs: int) -> FinetuneResult:
        """--resume of a run that is done: said, and nothing rewritten."""
        out = self.folder.out
        self.log(
            f"{out} is finished: all {epochs} epochs trained and its results written, nothing to resume; "
            f"train it longer with `zoo-adapt finetune --out {out} --resume --epochs N` (N > {epochs})"
        )
        model, _ = load_model(self.folder.path(MODEL_FILE), self.device)
        metrics = json.loads(self.folder.path(METRICS_FILE).read_text())
        return FinetuneResult(model, metrics["history"], metrics, out)

    def announce(self, prepared: Prepared) -> None:
        """The run's first lines: what trains on what, the recipes, the warnings."""
        c, data, procs = prepared.config, prepared.data, self.procs
        batch = f"batch {c.batch_size}" + (
            f" per process x {procs.world} = {c.batch_size * procs.world}" if procs.active else ""
        )
        self.log(
            f"{c.backbone}: {len(data.classes)} classes, {len(data.train)} training and "
            f"{len(data.val) if data.val is not None else 0} validation images ({data.where}), "
            f"{c.image_size}px, {batch}, {self.device}, strategy {c.strategy}; {prepared.feeds.how}"
        )
        recipes = recipes_line(c)
        if recipes:
            self.log(f"recipes: {recipes}")
        for warning in (
            start_warnings(c, prepared.stored) + imbalance_warnings(c, prepared.counts, data.classes) + data.warnings
        ):
            self.log(f"warning: {warning}")

    # -- phase 3: the folder is written ------------------------------------------------
    def begin(self, prepared: Prepared, curve: LRCurve | None) -> None:
        c = prepared.config
        if not self.procs.main:
            return
        self.folder.begin(config_text(resolved_values(c), machine_notes(c)), fresh=prepared.stored is None)
        if self.ranking is not None:
            write_text(self.folder.path(RANK_FILE), json.dumps(self.ranking, indent=2) + "\n")
        if curve is not None:
            plot_lr_curve(curve, self.folder.path("lr_find.png"), title=f"{c.backbone}: learning-rate finder")

    def write_model(self, prepared: Prepared, path: Path, state: dict | None, epoch: int, **extra_meta) -> Path:
        c = prepared.config
        if c.multi_label:
            extra_meta["multi_label"] = True
        return export_model(
            prepared.model,
            path,
            prepared.data.classes,
            prepared.norm,
            extra={"epoch": epoch, "hflip": c.hflip, "vflip": c.vflip, "rot90": c.rot90, **extra_meta},
            state=state,
        )

    # -- phase 5: the end ----------------------------------------------------------------
    def finish(self, prepared: Prepared, built: Built) -> dict[str, Any]:
        """After the last epoch: the kept model's final validation (and TTA; every process
        evaluates its shard), then, on rank 0, the export, the metrics and the plots."""
        c, model, feeds, folder = prepared.config, prepared.model, prepared.feeds, self.folder
        loop, recorder, adaptation = built.loop, built.recorder, prepared.adaptation
        metrics = run_metrics(c, prepared.data, prepared.counts, loop, self.procs.world, finished=True)
        kept = recorder.kept_epoch or len(loop.history)
        last_right = None
        if feeds.val is not None and kept != len(loop.history):  # the last epoch, for the paired comparison
            with loop.evaluated_weights():
                last_right = loop.validate().correct
        if recorder.kept_state is not None:
            model.load_state_dict(recorder.kept_state)
        layers = 0
        if adaptation is not None and adaptation.target_bn:  # before every final figure and the export
            layers = adaptation.use_target_statistics(loop)
            self.log(
                f"BatchNorm statistics of the {adaptation.num_target} target images in {layers} layers "
                "(--target-bn target): the final figures and the export are of the target-normalised model"
                if layers
                else "--target-bn target: the model has no BatchNorm layer, nothing to recompute"
            )
        metrics["kept_epoch"] = kept
        fitted, kept_right = None, None
        if feeds.val is not None:
            final = loop.validate(intervals=True, keep_scores=True)
            self.evaluations["final"] = final
            kept_right = final.correct
            metrics.update(validation_metrics(final))
            fitted, why = calibrate(c, final)
            if fitted is not None:
                metrics.update(fitted.metrics())
            else:
                metrics["calibration_skipped"] = why
            if layers and loop.history:
                # the kept epoch as its line said, with training's BatchNorm statistics: beside the
                # target-statistics figure it shows no collapse, only the statistics changing
                metrics["val_accuracy_trained_bn"] = loop.history[kept - 1].val_accuracy
            if c.tta:
                network = loop.eval_network if feeds.network is None else model
                tta = loop.validate(
                    tta=True,
                    flip=c.hflip,
                    vflip=c.vflip,
                    rot90=c.rot90,
                    batches=feeds.val_images,
                    network=network,
                    intervals=True,
                    temperature=fitted.temperature if fitted else 1.0,
                )
                metrics.update(tta_metrics(final, tta))
        metrics["selection"] = selection(loop, c, metrics, kept_right, last_right)
        if adaptation is not None:
            finish_adaptation(
                adaptation,
                c,
                loop,
                feeds,
                prepared.gap_before,
                metrics,
                folder.path(ADAPTATION_FILE),
                write=self.procs.main,
            )
        if not self.procs.main:
            return metrics
        chosen = {"thresholds": metrics["thresholds"]} if "thresholds" in metrics else {}
        if fitted is not None:
            chosen["temperature"] = fitted.temperature
        folder.write_outputs(
            True,
            lambda path: self.write_model(
                prepared, path, None, kept, **chosen, val_accuracy=metrics.get("val_accuracy")
            ),
            metrics,
        )
        plot_curves(metrics["history"], folder.path("curves.png"), title=f"{c.backbone} ({c.strategy})", kept=kept)
        if metrics.get("confusion_matrix"):
            plot_confusion(
                metrics["confusion_matrix"],
                prepared.data.classes,
                folder.path("confusion_matrix.png"),
                title=f"{c.backbone}, epoch {kept}: {metrics['num_val']} validation images "
                f"(counts; colour = share of the true class)",
            )
        if fitted is not None:
            plot_reliability(
                fitted.before,
                fitted.after,
                folder.path(CALIBRATION_PLOT),
                title=f"{c.backbone}, epoch {kept}: {fitted.images} validation images",
            )
        ship(c, model, prepared.data.val, prepared.data.classes, prepared.norm, folder, self.device, self.log)
        for line in summary_lines(metrics, folder.out):
            self.log(line)
        return metrics


def keep_provenance(model: nn.Module, weights: str | None) -> None:
    """Record on a rebuilt model the pretrained weights its run started from."""
    backbone = backbone_of(model)
    initial = None if weights in (None, "None") else weights
    setattr(model, "zoo_adapt", dataclasses.replace(backbone, initial_weights=initial))  # noqa: B010


def make_task(config: FinetuneConfig, counts: list[int], num_train: int) -> SingleLabel | MultiLabel:
    """The loss and accuracy of the run: single- or multi-label, with --balance loss's
    weights from the training counts (single-label: n / (classes x count), so every
    class weighs the same in all; multi-label: negatives / positives per class)."""
    weighted = config.balance == "loss"
    if config.multi_label:
        return MultiLabel([(num_train - n) / max(n, 1) for n in counts] if weighted else None)
    weights = [num_train / (len(counts) * max(n, 1)) for n in counts] if weighted else None
    return SingleLabel(config.label_smoothing, weights)


def _check_resumable(
    stored: dict[str, Any], config: FinetuneConfig, classes: list[str], folder: RunFolder, world: int
) -> None:
    """A checkpoint is only continued with the options it was made with, by as many
    processes (another number would change the global batch)."""
    trained_by = stored.get("processes", 1)
    if trained_by != world:
        how = (
            f"`torchrun --nproc-per-node {trained_by} -m zoo_adapt finetune --out {folder.out} --resume`"
            if trained_by > 1
            else f"`zoo-adapt finetune --out {folder.out} --resume` (without torchrun)"
        )
        raise ZooAdaptError(
            f"{folder.path(CHECKPOINT)} was trained by {trained_by} process(es), not {world}; "
            f"resume it with {how}: another number would change the global batch"
        )
    if stored.get("backbone") != config.backbone or stored.get("classes") != classes:
        raise ZooAdaptError(
            f"{folder.path(CHECKPOINT)} is of another run (backbone {stored.get('backbone')!r}, "
            f"{len(stored.get('classes') or [])} classes); resume with the options it was started "
            "with, or start again with --overwrite"
        )
    meta = declarations()
    now, recorded = resolved_values(config), stored.get("config", {})
    # an option newer than the checkpoint had its default when the checkpoint was made
    newer = {n: meta[n].default for n in now if n not in recorded and meta[n].default is not dataclasses.MISSING}
    made_with = {**newer, **recorded}
    changed = [
        name
        for name in set(made_with) | set(now)
        if name in meta and meta[name].metadata["resume"] == "fixed" and made_with.get(name) != now.get(name)
    ]
    if config.epochs < len(stored.get("history", [])):
        raise ZooAdaptError(f"--epochs {config.epochs}: the run already has {len(stored['history'])} epochs")
    if changed:
        name = sorted(changed)[0]
        raise ZooAdaptError(
            f"{folder.path(CHECKPOINT)} was made with --{name.replace('_', '-')} "
            f"{made_with.get(name)!r}, not {now.get(name)!r}; a resumed run keeps the options it "
            "was started with (start a new run with another --out to change them)"
        )
