"""The training loop: epochs of steps over batches already on the device, with named
events that callback objects hook into.

The loop keeps two things apart. `model` is the described model, the plain upstream
module carrying `model.zoo_adapt` (head, layer groups, normalization): freezing,
per-group rates, checkpoints and export always use it. `network` is what runs forward
in training and `eval_network` in evaluation: the model itself, or the wrappers of
`runtime` (DDP, torch.compile) around it. How the network runs (processes, precision,
wrappers, a weight average) is the `Runtime`'s, which callbacks fill in at `setup`.

A step never waits for the GPU: losses and accuracies are summed on the device and
read once per epoch (and when a progress display asks, at most about once a second);
a non-finite loss is caught at the next check, every `check_every` steps. Under fp16 the
loss scaler skips the steps whose gradients overflowed (counted on the device, read at
the same checks); a run whose scaler skips `MAX_SKIPPED_IN_A_ROW` steps in a row has
diverged and stops there, as a non-finite loss stops an fp32 or bf16 run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zoo_adapt.data.pipeline import Batches, cycle
from zoo_adapt.engine.callbacks import Callback
from zoo_adapt.engine.runtime import Runtime
from zoo_adapt.engine.tasks import SingleLabel
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.metrics.evaluation import evaluate
from zoo_adapt.metrics.scores import Evaluation
from zoo_adapt.model.layers import freeze_to, group_parameters, trainable_groups
from zoo_adapt.seeds import global_seed, seed_everything

# fp16: a run whose loss scaler skips this many optimizer steps in a row has diverged. From
# GradScaler's first scale, 2**16, that many halvings reach 2**-8: gradients that overflow
# fp16 even scaled down 256 times are not an early overflow the scaler recovers from.
MAX_SKIPPED_IN_A_ROW = 24


@dataclass
class Step:
    """One optimizer step as the callbacks see it: they may replace `x` before the
    forward pass (adding target images, mixing), add to `loss` after it, and put
    per-step figures (tensors or numbers, averaged over the epoch) in `figures`. The
    first `len(y)` rows of `x` are the labelled ones. With gradient accumulation a Step
    is one micro-batch; `update` says whether the optimizer stepped after it."""

    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    update: bool = True

    @property
    def n(self) -> int:
        return len(self.y)


@dataclass
class EpochRecord:
    epoch: int
    stage: str
    frozen_to: int
    trainable_groups: list[int]
    lrs: dict[str, float]
    train_loss: float
    train_accuracy: float
    images_per_second: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_top5: float | None = None
    val_balanced_accuracy: float | None = None
    val_macro_f1: float | None = None
    val_map: float | None = None
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(d.pop("extra"))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names})

    def get(self, key: str):
        return self.to_dict().get(key)


class Loop:
    """Runs the epochs of a freeze plan. Events, in order, each called on every callback
    (see `Callback`): setup (once), epoch_start, then per step before_forward,
    after_loss, after_backward, step_end; after_validate, epoch_end, fit_end; and
    close, always, even after an error.

    `accumulate` N: the optimizer and the schedule step once every N micro-batches (the
    per-step events still come per micro-batch, `Step.update` marking the last of each
    group), each micro-batch's loss scaled by 1/N, so one update equals one of a batch N
    times larger; the epoch's last group may be shorter and is scaled by its own size.
    Under fp16 (`runtime.scaler`) the loss is scaled before backward and the optimizer
    steps through the scaler, which skips a step whose gradients overflowed; the
    skipped steps are counted in `skipped_steps`."""

    def __init__(
        self,
        model: nn.Module,
        *,
        train: Batches,
        val: Batches | None,
        classes: list[str],
        plan: Sequence[int],
        optimizer: torch.optim.Optimizer,
        schedule: Callable[[int], float],
        callbacks: Sequence[Callback] = (),
        task=None,
        seed: int = 0,
        bn: str = "train",
        eval_body: bool = False,
        steps_per_epoch: int | None = None,
        select: str = "val_accuracy",
        runtime: Runtime | None = None,
        check_every: int = 50,
        network: nn.Module | None = None,
        tie_margin: float = 0.0,
        accumulate: int = 1,
        clip_grad: float | None = None,
    ):
        self.model = model
        self.runtime = runtime or Runtime(next(model.parameters()).device)
        self.device = self.runtime.device
        self.base_network = self.network = self.eval_network = network or model
        self.train, self.val, self.classes, self.plan = train, val, list(classes), list(plan)
        self.optimizer, self.task = optimizer, task or SingleLabel()
        self.seed, self.bn, self.eval_body = seed, bn, eval_body
        self.select = select  # the history figure the kept epoch is chosen by (a callback may change it in setup)
        self.steps_per_epoch = steps_per_epoch or len(train)
        self.accumulate = max(1, accumulate)
        self.clip_grad = clip_grad  # the largest gradient norm an update takes (None: no clipping)
        self.updates_per_epoch = math.ceil(self.steps_per_epoch / self.accumulate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.callbacks = sorted(callbacks, key=lambda c: c.order)
        self.groups = [name for name, _ in group_parameters(model)]
        self.check_every = check_every
        self.history: list[EpochRecord] = []
        self.best: tuple[float, int] | None = None  # (selection score, epoch) of the epoch to keep
        self.top: float | None = None  # the highest selection score so far
        self.tie_margin = tie_margin  # scores this close to the highest count as ties: the later epoch wins
        self.epoch = 0
        self.running: dict[str, torch.Tensor | float] = {}
        self.seen = 0
        self.stopped: str | None = None  # a callback's reason to end the run early
        self.skipped_steps = 0  # fp16: optimizer steps the loss scaler skipped (overflowing gradients)
        # fp16, on the device: steps skipped this epoch, in a row now, and the most in a row (read at the checks)
        self._skips = torch.zeros(3, dtype=torch.int64, device=self.device)
        self._micro = 0  # the batch's index in the epoch
        self._emit("setup")
        self.rewrap()

    # -- what callbacks and the job read and change ---------------------------------
    def rewrap(self) -> None:
        """Build the wrapped networks from `runtime.wrappers` again (after the set of
        trainable parameters changed: DDP must be rebuilt then)."""
        self.network, self.eval_network = self.runtime.wrap(self.base_network)

    @property
    def world(self) -> int:
        return self.runtime.world

    @property
    def total_steps(self) -> int:
        """Optimizer steps in all (fewer than batches with accumulation)."""
        return len(self.plan) * self.updates_per_epoch

    @property
    def progress(self) -> float:
        """Fraction of all optimizer steps done."""
        return self.scheduler.last_epoch / max(1, self.total_steps)

    def autocast(self):
        return self.runtime.autocast()

    def kept_weights(self) -> dict[str, torch.Tensor]:
        """The weights validation scores and the export keeps: the model's own, or the
        average's (its state has the model's keys)."""
        averaged = self.runtime.averaged
        kept = averaged.module if averaged is not None else self.model
        assert isinstance(kept, nn.Module)
        return kept.state_dict()

    @contextmanager
    def evaluated_weights(self):
        """For the duration the model holds `kept_weights` (copied in place, so every
        wrapper sharing its parameters sees them); its own weights come back after."""
        if self.runtime.averaged is None:
            yield
            return
        own = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.kept_weights())
        try:
            yield
        finally:
            self.model.load_state_dict(own)

    def stage_name(self, epoch: int) -> str:
        k = self.plan[epoch]
        if k == len(self.groups) - 1:
            return "head"
        return "all" if k == 0 else f"from {self.groups[k]}"

    def running_means(self, everywhere: bool = False) -> dict[str, float]:
        """The epoch's figures so far, of this process or (`everywhere`) of all processes
        training together (reads the device: call sparingly)."""
        if not self.running:
            return {}
        keys = list(self.running)
        sums = torch.stack(
            [torch.as_tensor(self.running[k], device=self.device, dtype=torch.float64) for k in keys]
            + [torch.tensor(float(self.seen), device=self.device, dtype=torch.float64)]
        )
        if everywhere:
            sums = self.runtime.sum(sums)
        *values, seen = sums.tolist()
        return {k: v / max(seen, 1) for k, v in zip(keys, values)}

    # -- the loop ------------------------------------------------------------------
    def fit(self) -> list[EpochRecord]:
        try:
            while self.epoch < len(self.plan) and not self.stopped:
                self._epoch()
            self._emit("fit_end")
        finally:
            self._emit("close")
        return self.history

    def _epoch(self) -> None:
        epoch = self.epoch
        seed_everything(global_seed(self.seed, epoch))  # resumable: each epoch replays exactly
        self.train.set_epoch(epoch)
        freeze_to(self.model, self.plan[epoch], bn=self.bn)
        self.model.train(not self.eval_body)
        self.running, self.seen = {}, 0
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._skips[0] = 0
        self._emit("epoch_start", epoch)
        start = time.perf_counter()
        for i, (x, y) in enumerate(cycle(self.train, self.steps_per_epoch)):
            self._micro = i
            step = Step(x, y, update=i % self.accumulate == self.accumulate - 1 or i == self.steps_per_epoch - 1)
            self._step(step)
            if self.runtime.scaler is None and step.loss is not None:  # under fp16 the scaler skips overflows itself
                nonfinite |= ~torch.isfinite(step.loss.detach())
            self.seen += step.n
            for key, value in step.figures.items():
                value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
                self.running[key] = self.running.get(key, 0.0) + value * step.n
            self._emit("step_end", step)
            if (i + 1) % self.check_every == 0:
                self._check_finite(nonfinite)
        self._check_finite(nonfinite)
        self.skipped_steps += int(self._skips[0])
        means = self.running_means(everywhere=True)
        train_seconds = time.perf_counter() - start
        record = EpochRecord(
            epoch=epoch + 1,
            stage=self.stage_name(epoch),
            frozen_to=self.plan[epoch],
            trainable_groups=[i for i, t in enumerate(trainable_groups(self.model)) if t],
            lrs=self._current_lrs(),
            train_loss=means.pop("loss"),
            train_accuracy=means.pop("accuracy"),
            images_per_second=self.seen * self.world / train_seconds,
            extra=means,
        )
        if self.runtime.scaler is not None:
            record.extra["skipped_steps"] = self.skipped_steps
        with self.evaluated_weights():  # what callbacks measure after validation is of the same weights
            if self.val is not None:
                ev = self.validate()
                record.val_loss, record.val_accuracy, record.val_top5 = ev.loss, ev.accuracy, ev.top5
                record.val_balanced_accuracy, record.val_macro_f1, record.val_map = (
                    ev.balanced_accuracy,
                    ev.macro_f1,
                    ev.map,
                )
            self._emit("after_validate", record)
        record.seconds = time.perf_counter() - start
        self.history.append(record)
        self.epoch += 1
        improved = self._track_best(record)
        self._emit("epoch_end", record, improved)

    def _step(self, step: Step) -> None:
        """One micro-batch: forward, backward (gradients add up over a group, which DDP
        synchronises only on its last), and on the group's last the update."""
        first = self._micro - self._micro % self.accumulate  # the group's first micro-batch in the epoch
        group = min(self.accumulate, self.steps_per_epoch - first)  # micro-batches in this update
        scaler = self.runtime.scaler
        self._emit("before_forward", step)
        no_sync = getattr(self.network, "no_sync", None)
        with nullcontext() if step.update or no_sync is None else no_sync():
            with self.autocast():
                step.logits = self.network(step.x)
                labelled = step.logits[: step.n]
                step.loss = self.task.loss(labelled, step.y)
                step.figures["loss"] = step.loss.detach()
                step.figures["accuracy"] = self.task.accuracy(labelled.detach(), step.y)
                self._emit("after_loss", step)
            if self._micro == first:
                self.optimizer.zero_grad(set_to_none=True)
            loss = step.loss / group if group > 1 else step.loss
            (scaler.scale(loss) if scaler is not None else loss).backward()
        self._emit("after_backward", step)
        if step.update:
            if self.clip_grad is not None:
                self._clip(scaler, self.clip_grad)
            if scaler is None:
                self.optimizer.step()
            else:
                self._scaled_update(scaler)
            self.scheduler.step()

    def _scaled_update(self, scaler) -> None:
        """The optimizer steps through the fp16 loss scaler, which skips the step (and
        halves its scale) when the gradients overflowed. Whether it skipped is counted on
        the device: `get_scale()` would wait for the GPU every step (with a fused
        optimizer, the scaler's own overflow check does not)."""
        before = scaler._get_scale_async().clone()
        scaler.step(self.optimizer)
        scaler.update()
        skipped = (scaler._get_scale_async() < before).to(torch.int64)
        total, in_a_row, most = self._skips.unbind()
        in_a_row = (in_a_row + skipped) * skipped
        self._skips.copy_(torch.stack([total + skipped, in_a_row, torch.maximum(most, in_a_row)]))

    def _clip(self, scaler, max_norm: float) -> None:
        """Scale the gradients down to norm `max_norm` where above it (over every
        parameter the optimizer updates); under fp16 they are unscaled first, so the
        bound is on the true gradients."""
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    def _check_finite(self, nonfinite: torch.Tensor) -> None:
        flags = torch.stack([nonfinite.to(torch.int64), (self._skips[2] >= MAX_SKIPPED_IN_A_ROW).to(torch.int64)])
        if self.runtime.all_reduce is not None:  # every process stops together
            flags = self.runtime.all_reduce(flags)
        nonfinite_loss, diverged = flags.tolist()
        if nonfinite_loss:
            raise ZooAdaptError(f"the loss became non-finite (nan or inf) in epoch {self.epoch + 1}: lower --lr")
        if diverged:
            scale = self.runtime.scaler.get_scale() if self.runtime.scaler is not None else float("nan")
            raise ZooAdaptError(
                f"the loss became non-finite (nan or inf) in epoch {self.epoch + 1}: the fp16 loss scaler "
                f"skipped at least {MAX_SKIPPED_IN_A_ROW} optimizer steps in a row (gradients overflowed at every "
                f"scale down to {scale:g}); lower --lr, or train with --precision fp32"
            )

    def validate(
        self,
        tta: bool = False,
        flip: bool = True,
        batches: Batches | None = None,
        network: nn.Module | None = None,
        vflip: bool = False,
        rot90: bool = False,
        **final,
    ) -> Evaluation:
        """Evaluate `network` (default: the eval network) on `batches` (default: the
        validation batches); `final`: evaluate's options for final figures (intervals,
        keep_scores, temperature)."""
        was_training = self.model.training
        try:
            source = batches or self.val
            if source is None:
                raise ZooAdaptError("nothing to validate on: the run has no validation images")
            return evaluate(
                network or self.eval_network,
                source,
                self.classes,
                tta=tta,
                flip=flip,
                vflip=vflip,
                rot90=rot90,
                autocast=self.autocast,
                progress="test-time augmentation" if tta else "validating",
                multi_label=getattr(self.task, "multi_label", False),
                **final,
            )
        finally:
            self.model.train(was_training)

    def _track_best(self, record: EpochRecord) -> bool:
        """Whether `record` is the epoch to keep now: the highest score so far, or one
        within `tie_margin` of it (a tie on a small validation set is noise; the later
        epoch has trained longer)."""
        score = record.get(self.select)
        if score is None:
            return False
        self.top = score if self.top is None else max(self.top, score)
        if self.best is None or score >= self.top - self.tie_margin - 1e-12:
            self.best = (score, record.epoch)
            return True
        return False

    def _current_lrs(self) -> dict[str, float]:
        """Every layer group's rate at the end of the epoch (and a method's own groups')."""
        lrs: dict[str, float] = {}
        for g in self.optimizer.param_groups:
            lrs.setdefault(g.get("name", "extra"), g["lr"])
        return lrs

    def _emit(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    # -- checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: the described model's weights (never a
        wrapper's), optimizer, schedule, the fp16 loss scaler, history, best, and each
        callback's state."""
        state = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": [r.to_dict() for r in self.history],
            "best": self.best,
            "top": self.top,
            "stopped": self.stopped,
            "skipped_steps": self.skipped_steps,
            "callbacks": {c.name: c.state_dict() for c in self.callbacks if c.state_dict()},
        }
        if self.runtime.scaler is not None:
            state["scaler"] = self.runtime.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = [EpochRecord.from_dict(d) for d in state["history"]]
        self.best = tuple(state["best"]) if state["best"] else None
        self.top = state.get("top", self.best[0] if self.best else None)
        self.epoch = state["epoch"]
        self.stopped = state.get("stopped")
        self.skipped_steps = state.get("skipped_steps", 0)
        if self.runtime.scaler is not None and "scaler" in state:
            self.runtime.scaler.load_state_dict(state["scaler"])
        saved = state.get("callbacks", {})
        for callback in self.callbacks:
            if callback.name in saved:
                callback.load_state_dict(saved[callback.name])
