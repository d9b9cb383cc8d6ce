"""Callbacks: each behaviour of a run beyond the bare step (mixed precision, compile,
progress, domain adaptation, the run folder, distributed training) is one object that
hooks into the loop's named events and may carry state that is checkpointed with the
run. Those that change how the network runs (precision, compile, the weight average,
DDP) say so in `loop.runtime` at setup."""

from __future__ import annotations

import re
import time
from typing import Any

import torch

from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.progress import EVERY, Ticker


class Callback:
    """Override the events you need; each receives the loop first. `order` sorts the
    callbacks (lower first); `state_dict`/`load_state_dict` put state in checkpoints
    under `name`."""

    order = 0

    @property
    def name(self) -> str:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()

    def setup(self, loop) -> None:
        """Once, when the loop is made: fill in `loop.runtime` (precision, wrappers), attach hooks."""

    def epoch_start(self, loop, epoch: int) -> None:
        """The freeze boundary of the epoch is applied, the model is in train mode."""

    def before_forward(self, loop, step) -> None:
        """May replace `step.x` (adding unlabelled rows after the labelled ones)."""

    def after_loss(self, loop, step) -> None:
        """Inside autocast, `step.logits` and the task's `step.loss` are there: add terms
        to `step.loss`, figures to `step.figures`."""

    def after_backward(self, loop, step) -> None:
        """Gradients are there; the optimizer has not stepped yet (with accumulation they
        are the group's so far: it steps after this micro-batch when `step.update`)."""

    def step_end(self, loop, step) -> None:
        """The optimizer and the schedule have stepped (if `step.update`)."""

    def after_validate(self, loop, record) -> None:
        """After validation, before the best epoch is chosen: add validation-time figures
        to `record.extra` (they land in the history and may be `loop.select`). The model
        holds the weights validation scored (a weight average's, with one)."""

    def epoch_end(self, loop, record, improved: bool) -> None:
        """`record` is in `loop.history`; `improved` says whether it is the new best by
        `loop.select`."""

    def fit_end(self, loop) -> None:
        """Every epoch ran."""

    def close(self, loop) -> None:
        """Always, last, even after an error or an interrupt: undo what setup attached."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class MixedPrecision(Callback):
    """Autocast in training and evaluation: bf16 (no loss scaling needed), or fp16 with
    a dynamic loss scaler (`torch.amp.GradScaler`) for GPUs without bf16; the scaler's
    state is checkpointed with the loop's."""

    order = -40

    def __init__(self, dtype: torch.dtype = torch.bfloat16):
        self.dtype = dtype

    def setup(self, loop) -> None:
        loop.runtime.autocast_dtype = self.dtype
        if self.dtype == torch.float16:
            loop.runtime.scaler = torch.amp.GradScaler(loop.device.type)


class Compile(Callback):
    """Runs `torch.compile` of the model in training and evaluation; the described model
    stays the plain module (parameters are shared), so groups, freezing and export are
    untouched. Compiling happens on the first step of each stage (unfreezing changes the
    graph) and the first evaluation; `seconds` estimates the time it took, as those
    steps' excess over a typical step, so training speed can be reported without it.
    Shapes are static: the last, smaller batch of an epoch gets its own graph rather than
    turning every batch's graph into a slower dynamic-shape one."""

    order = -10  # after DataParallel (-20): compiles the DDP-wrapped network

    def __init__(self, mode: str | None = None, backend: str = "inductor"):
        self.mode, self.backend, self.seconds = mode, backend, 0.0
        self._first: float | None = None
        self._stage: int | None = None

    def setup(self, loop) -> None:
        loop.runtime.wrappers.append((self._compile, False))

    def _compile(self, network):
        return torch.compile(network, mode=self.mode, backend=self.backend, dynamic=False)

    def epoch_start(self, loop, epoch: int) -> None:
        self._timing = loop.plan[epoch] != self._stage
        self._stage, self._steps, self._first = loop.plan[epoch], 0, None

    def before_forward(self, loop, step) -> None:
        if self._timing and self._steps == 0:
            _sync(loop.device)
            self._t0 = time.perf_counter()

    def step_end(self, loop, step) -> None:
        self._steps += 1
        if self._timing and self._steps == 1:
            _sync(loop.device)
            self._first = time.perf_counter() - self._t0

    def epoch_end(self, loop, record, improved: bool) -> None:
        if self._first is not None and self._steps > 1:
            _sync(loop.device)
            train_seconds = loop.seen / record.images_per_second
            typical = (train_seconds - self._first) / (self._steps - 1)
            self.seconds += max(0.0, self._first - typical)
        record.extra["compile_seconds"] = self.seconds

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds = state["seconds"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Progress(Callback):
    """What a person watching sees: the progress of each epoch (a bar in a terminal, a
    line every few seconds elsewhere; see `zoo_adapt.progress`), and the summary line of
    each epoch, always, through `log`."""

    order = 100

    def __init__(self, log=print, every: float | None = None, stream=None):
        self.log, self.every, self.stream = log or (lambda s: None), every, stream
        self.ticker: Ticker | None = None

    def epoch_start(self, loop, epoch: int) -> None:
        def figures():
            means = loop.running_means()
            return {"loss": f"{means['loss']:.3f}", "acc": f"{means['accuracy']:.1%}"} if means else {}

        self.ticker = Ticker(
            loop.steps_per_epoch,
            f"epoch {epoch + 1}/{len(loop.plan)} [{loop.stage_name(epoch)}]",
            every=self.every or EVERY,
            stream=self.stream,
            figures=figures,
        )

    def step_end(self, loop, step) -> None:
        if self.ticker is not None:
            self.ticker.update(step.n * loop.world)

    def epoch_end(self, loop, record, improved: bool) -> None:
        self._close()
        r = record
        val = ""
        if r.val_map is not None:
            val = f" | val loss {r.val_loss:.3f} mAP {r.val_map:.1%} macro-F1 {r.val_macro_f1 or 0:.1%}"
        elif r.val_accuracy is not None:
            val = f" | val loss {r.val_loss:.3f} top1 {r.val_accuracy:.1%} top5 {r.val_top5:.1%}"
            if loop.select == "val_balanced_accuracy" and r.val_balanced_accuracy is not None:
                val += f" balanced {r.val_balanced_accuracy:.1%}"
            elif loop.select == "val_macro_f1" and r.val_macro_f1 is not None:
                val += f" macro-F1 {r.val_macro_f1:.1%}"
        extra = "".join(f" {k} {v:.3g}" for k, v in r.extra.items() if isinstance(v, (int, float)))
        self.log(
            f"epoch {r.epoch}/{len(loop.plan)} [{r.stage}] train loss {r.train_loss:.3f} "
            f"acc {r.train_accuracy:.1%}{val}{extra} | {r.images_per_second:.0f} img/s {r.seconds:.0f}s"
        )

    def close(self, loop) -> None:
        self._close()

    def _close(self) -> None:
        if self.ticker is not None:
            self.ticker.close()
            self.ticker = None


class WeightAverage(Callback):
    """An exponential moving average of the weights (timm's `ModelEmaV3`), updated after
    each optimizer step from the described model (`loop.model`, never a compiled or DDP
    wrapper: every process holds the same weights, so the same average). Validation, the
    kept epoch and the export use the average (`loop.runtime.averaged`); its state is in the
    checkpoint, so a resumed run continues it exactly. The decay warms up as timm's
    (1 - (1 + step) ** -2/3, capped at `decay`): a short fine-tuning run would otherwise
    average in mostly the starting weights."""

    order = -5

    def __init__(self, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.ema: Any = None  # timm's ModelEmaV3, made at setup

    @property
    def name(self) -> str:
        return "ema"

    def setup(self, loop) -> None:
        from timm.utils import ModelEmaV3  # timm is heavy: only runs with --ema pay for it here

        self.ema = ModelEmaV3(loop.model, decay=self.decay, use_warmup=self.warmup)
        loop.runtime.averaged = self.ema

    def step_end(self, loop, step) -> None:
        if step.update:
            self.ema.update(loop.model, step=loop.scheduler.last_epoch)

    def epoch_end(self, loop, record, improved: bool) -> None:
        record.extra["ema_decay"] = self.ema.get_decay(loop.scheduler.last_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.ema.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(state["weights"])


class EarlyStop(Callback):
    """Ends the run when the selection score (`loop.select`) has not beaten its best for
    `patience` epochs. It reads only the history, so a resumed run decides the same."""

    order = 80  # before the recorder (90), so the checkpoint records the stop

    def __init__(self, patience: int):
        self.patience = patience

    def setup(self, loop) -> None:
        if loop.val is None:
            raise ZooAdaptError("--early-stop needs validation images (a val/ folder or --val-split above 0)")

    def epoch_end(self, loop, record, improved: bool) -> None:
        scores = [r.get(loop.select) for r in loop.history]
        if scores[-1] is None or loop.epoch >= len(loop.plan):
            return
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # the first epoch reaching the best
        waited = len(scores) - 1 - best
        if waited >= self.patience:
            by = loop.select.replace("_", " ")
            loop.stopped = (
                f"early stop after epoch {record.epoch} of {len(loop.plan)}: {by} has not improved "
                f"for {waited} epochs (best {scores[best]:.4g} at epoch {best + 1}; --early-stop "
                f"{self.patience})"
            )
