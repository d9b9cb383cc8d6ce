"""Fine-tuning: the loop practitioners write by hand, once, for every backbone.

`finetune(FinetuneConfig(...))` is what `zoo-adapt finetune` runs. A run is a list of
epochs, each with a freeze boundary from the strategy; one optimizer holds every
parameter with its layer group's rate, and one LR schedule restarts (warm-up included)
whenever the boundary moves, so newly unfrozen layers start gently.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .config import STRATEGIES, FinetuneConfig
from .errors import ZooAdaptError
from .evaluation import Evaluation, evaluate
from .layers import freeze_to, trainable_groups
from .optim import make_optimizer, param_groups, schedule_factor

CHECKPOINT = "checkpoint.pt"


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
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(d.pop("extra"))
        return d


def freeze_plan(strategy: str, epochs: int, n_groups: int, head_epochs: int = 1,
                unfreeze_every: int = 1) -> list[int]:
    """The freeze boundary (first trainable group) of each epoch."""
    head = n_groups - 1
    if strategy == "linear-probe":
        return [head] * epochs
    if strategy == "finetune":
        return [0] * epochs
    if strategy == "two-stage":
        return [head if e < head_epochs else 0 for e in range(epochs)]
    if strategy == "gradual":
        return [max(0, head - e // unfreeze_every) for e in range(epochs)]
    raise ZooAdaptError(f"unknown strategy {strategy!r}; choices: {', '.join(STRATEGIES)}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ZooAdaptError("--device cuda asked for, but torch sees no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ZooAdaptError(f"unknown device {name!r}: {e}") from None


class HeadFeatures:
    """The features the head receives (the backbone's pooled output), captured by a
    forward pre-hook on the head the plugin names: no architecture special cases."""

    def __init__(self, head: nn.Module):
        self.value: torch.Tensor | None = None
        self._handle = head.register_forward_pre_hook(self._keep)

    def _keep(self, module, args) -> None:
        self.value = args[0]

    def remove(self) -> None:
        self._handle.remove()


class Trainer:
    """Runs the epochs of a plan over a model made by create_model.

    Subclasses (domain adaptation) change `train_step`; callbacks receive
    (trainer, event, **info) for events 'epoch_start', 'step', 'epoch_end'."""

    def __init__(self, model: nn.Module, train_loader: DataLoader, val_loader: DataLoader | None,
                 classes: list[str], config: FinetuneConfig,
                 callbacks: list[Callable] = (), log: Callable[[str], None] | None = print):
        self.model, self.train_loader, self.val_loader = model, train_loader, val_loader
        self.classes, self.config = classes, config
        self.callbacks, self.log = list(callbacks), log or (lambda s: None)
        self.device = next(model.parameters()).device
        self.autocast = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        self.groups = [name for name, _ in _groups(model)]
        self.plan = freeze_plan(config.strategy, config.epochs, len(self.groups), config.head_epochs,
                                config.unfreeze_every)
        self.steps_per_epoch = self._steps_per_epoch()
        lr_body = config.lr_body
        if lr_body is None and config.lr_decay is None:
            lr_body = config.head_lr / 100
        self.optimizer = make_optimizer(
            self.extra_param_groups() + param_groups(model, config.head_lr, lr_body=lr_body,
                                                     lr_decay=config.lr_decay,
                                                     weight_decay=config.weight_decay),
            config.optimizer, config.momentum)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._factor)
        self.history: list[EpochRecord] = []
        self.best: tuple[float, int] | None = None  # (val accuracy, epoch)
        self.epoch = 0

    # -- hooks for subclasses -------------------------------------------------------
    def extra_param_groups(self) -> list[dict]:
        """Parameter groups of modules beside the model (a domain classifier, say)."""
        return []

    def _steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def train_step(self, batch) -> dict[str, float]:
        """One optimizer step; returns figures to average over the epoch (loss, accuracy,
        and the number of examples `n`)."""
        x, y = self._to_device(batch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
        self._step(loss)
        return {"loss": loss.item(), "accuracy": (logits.argmax(-1) == y).float().mean().item(),
                "n": len(y)}

    def epoch_figures(self) -> dict[str, float]:
        """Extra per-epoch figures for the history (validation-time measurements)."""
        return {}

    def close(self) -> None:
        """Undo what training attached to the model (hooks)."""

    # -- the loop -----------------------------------------------------------------
    def _to_device(self, batch):
        x, y = batch
        x = x.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x, torch.as_tensor(y).to(self.device, non_blocking=True)

    def _step(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise ZooAdaptError(f"the loss became {loss.item()} at epoch {self.epoch + 1}: lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()

    def progress(self) -> float:
        """Fraction of all optimizer steps done."""
        return self.scheduler.last_epoch / max(1, len(self.plan) * self.steps_per_epoch)

    def _factor(self, step: int) -> float:
        epoch = min(step // self.steps_per_epoch, len(self.plan) - 1)
        start = epoch
        while start > 0 and self.plan[start - 1] == self.plan[epoch]:
            start -= 1
        end = epoch
        while end + 1 < len(self.plan) and self.plan[end + 1] == self.plan[epoch]:
            end += 1
        stage_steps = (end - start + 1) * self.steps_per_epoch
        total = len(self.plan) * self.steps_per_epoch
        return schedule_factor(self.config.schedule, step - start * self.steps_per_epoch,
                               stage_steps, self.config.warmup, step / total)

    def stage_name(self, epoch: int) -> str:
        k = self.plan[epoch]
        if k == len(self.groups) - 1:
            return "head"
        return "all" if k == 0 else f"from {self.groups[k]}"

    def fit(self) -> list[EpochRecord]:
        from tqdm.auto import tqdm

        while self.epoch < len(self.plan):
            epoch = self.epoch
            self.reseed(self.config.seed * 1000 + epoch)  # resumable: epochs replay exactly
            freeze_to(self.model, self.plan[epoch], bn="frozen" if self.config.strategy ==
                      "linear-probe" else self.config.bn)
            self._emit("epoch_start", epoch=epoch)
            self.model.train()
            sums: dict[str, float] = {}
            count, start = 0, time.perf_counter()
            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{len(self.plan)} "
                       f"[{self.stage_name(epoch)}]", leave=False, file=sys.stderr, dynamic_ncols=True,
                       disable=None)
            for step, batch in enumerate(self._batches()):
                figures = self.train_step(batch)
                n = figures.pop("n")
                count += n
                for key, value in figures.items():
                    sums[key] = sums.get(key, 0.0) + value * n
                bar.update()
                bar.set_postfix(loss=f"{sums['loss'] / count:.3f}", acc=f"{sums['accuracy'] / count:.1%}")
                self._emit("step", epoch=epoch, step=step)
            bar.close()
            seconds = time.perf_counter() - start
            means = {k: v / max(count, 1) for k, v in sums.items()}
            record = EpochRecord(
                epoch=epoch + 1, stage=self.stage_name(epoch), frozen_to=self.plan[epoch],
                trainable_groups=[i for i, t in enumerate(trainable_groups(self.model)) if t],
                lrs=self._current_lrs(), train_loss=means.pop("loss"),
                train_accuracy=means.pop("accuracy"), images_per_second=count / seconds,
                extra=means)
            if self.val_loader is not None:
                ev = self.validate()
                record.val_loss, record.val_accuracy, record.val_top5 = ev.loss, ev.accuracy, ev.top5
            record.extra.update(self.epoch_figures())
            record.seconds = time.perf_counter() - start
            self.history.append(record)
            self.epoch += 1
            improved = self._track_best(record)
            self._emit("epoch_end", epoch=epoch, record=record, improved=improved)
            self.log(self._summary(record))
        return self.history

    def reseed(self, seed: int) -> None:
        """Seed every random stream of an epoch (augmentation, dropout, data order)."""
        seed_everything(seed)
        generator = getattr(self.train_loader, "generator", None)
        if generator is not None:
            generator.manual_seed(seed)

    def _batches(self):
        try:
            yield from self.train_loader
        except ZooAdaptError as e:
            from .data import worker_error

            raise worker_error(e) from None

    def validate(self, tta: bool = False) -> Evaluation:
        from .data import worker_error

        try:
            return evaluate(self.model, self.val_loader, self.classes, self.device, tta=tta,
                            autocast=self.autocast, flip=self.config.hflip)
        except ZooAdaptError as e:
            raise worker_error(e) from None

    def _track_best(self, record: EpochRecord) -> bool:
        if record.val_accuracy is None:
            return False
        if self.best is None or record.val_accuracy >= self.best[0]:
            self.best = (record.val_accuracy, record.epoch)
            return True
        return False

    def _current_lrs(self) -> dict[str, float]:
        """The head's and the stem's rate at the end of the epoch."""
        lrs = {}
        for g in self.optimizer.param_groups:
            lrs.setdefault(g.get("name", "extra"), g["lr"])
        return {name: lrs[name] for name in (self.groups[0], self.groups[-1]) if name in lrs}

    def _summary(self, r: EpochRecord) -> str:
        val = (f" | val loss {r.val_loss:.3f} top1 {r.val_accuracy:.1%} top5 {r.val_top5:.1%}"
               if r.val_accuracy is not None else "")
        extra = "".join(f" {k} {v:.3g}" for k, v in r.extra.items())
        return (f"epoch {r.epoch}/{len(self.plan)} [{r.stage}] train loss {r.train_loss:.3f} "
                f"acc {r.train_accuracy:.1%}{val}{extra} | {r.images_per_second:.0f} img/s {r.seconds:.0f}s")

    def _emit(self, event: str, **info) -> None:
        for callback in self.callbacks:
            callback(self, event, **info)

    # -- checkpoints ----------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "history": [r.to_dict() for r in self.history], "best": self.best,
                "classes": self.classes, "backbone": self.model.zoo_adapt.name}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        if state["classes"] != self.classes or state["backbone"] != self.model.zoo_adapt.name:
            raise ZooAdaptError("the checkpoint is of another run (different backbone or classes); "
                                "resume with the options it was started with")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = [_record_from_dict(d) for d in state["history"]]
        self.best = tuple(state["best"]) if state["best"] else None
        self.epoch = state["epoch"]


def _groups(model: nn.Module):
    from .layers import group_parameters

    return group_parameters(model)


def _record_from_dict(d: dict[str, Any]) -> EpochRecord:
    names = {f.name for f in dataclasses.fields(EpochRecord)}
    return EpochRecord(**{k: v for k, v in d.items() if k in names},
                       extra={k: v for k, v in d.items() if k not in names})


def save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(x: Any):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(type(x).__name__)
