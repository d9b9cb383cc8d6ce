"""The learning-rate finder (Smith 2017, "Cyclical learning rates", as fastai's
`lr_find` runs it): train on successive batches while the rate grows exponentially
from 1e-7 to 10, follow the smoothed loss, stop once it passes four times its minimum,
and suggest a rate from the curve. It runs on the model as the first stage of the run
trains it (the head alone for two-stage), with the run's optimizer and per-group rate
ratios, and puts every weight back afterwards.

The suggestion is fastai's 'valley': the longest stretch over which the smoothed loss
keeps falling, and a rate two-thirds of the way down it (fastai's default since 2.5);
the steepest point of the curve is reported too.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from zoo_adapt.data.pipeline import Batches, cycle
from zoo_adapt.engine.tasks import SingleLabel
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.model.layers import freeze_to
from zoo_adapt.model.optim import make_optimizer, param_groups
from zoo_adapt.model.recipes import freeze_plan
from zoo_adapt.zoo.backbone import backbone_of

START, END, STEPS = 1e-7, 10.0, 100  # fastai's defaults
BETA = 0.98  # smoothing of the loss (fastai's)
DIVERGED = 4.0  # stop when the smoothed loss exceeds this times its minimum


@dataclass
class LRCurve:
    lrs: list[float]
    losses: list[float]  # smoothed, debiased
    raw: list[float]
    suggestion: float  # valley
    steepest: float
    why_stopped: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lrs": self.lrs,
            "losses": self.losses,
            "raw_losses": self.raw,
            "suggestion": self.suggestion,
            "steepest": self.steepest,
            "why_stopped": self.why_stopped,
            **self.extra,
        }


def sweep(
    model: torch.nn.Module,
    network: torch.nn.Module,
    batches: Batches,
    *,
    strategy: str,
    bn: str,
    optimizer: str = "adamw",
    momentum: float = 0.9,
    weight_decay: float = 0.01,
    body_ratio: float = 0.01,
    lr_decay: float | None = None,
    label_smoothing: float = 0.0,
    autocast: Callable | None = None,
    scaler: Any = None,
    start: float = START,
    end: float = END,
    steps: int = STEPS,
    log=None,
) -> LRCurve:
    """Run the sweep on `network` (which runs `model`, or its head on cached features)
    and return the curve; `model`'s weights and buffers are as before afterwards.
    `body_ratio`: the stem's rate over the head's (the groups between spread as in a
    run), or `lr_decay` per group. `scaler`: fp16's loss scaler (a torch.amp.GradScaler),
    without which small gradients would underflow to zero in fp16."""
    autocast = nullcontext if autocast is None else autocast
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    plan = freeze_plan(strategy, 1, len(backbone_of(model).built_groups))
    freeze_to(model, plan[0], bn="frozen" if strategy == "linear-probe" else bn)
    model.train(strategy != "linear-probe")
    groups = param_groups(
        model, 1.0, lr_body=None if lr_decay else body_ratio, lr_decay=lr_decay, weight_decay=weight_decay
    )
    ratios = [g["lr"] for g in groups]
    opt = make_optimizer(groups, optimizer, momentum)
    task = SingleLabel(label_smoothing)
    lrs, raw, smooth = [], [], []
    average, best, why = 0.0, math.inf, f"reached {end:g}"
    try:
        batches.set_epoch(0)
        for i, (x, y) in enumerate(cycle(batches, steps)):
            lr = start * (end / start) ** (i / (steps - 1))
            for g, ratio in zip(opt.param_groups, ratios):
                g["lr"] = lr * ratio
            with autocast():
                loss = task.loss(network(x)[: len(y)], y)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            value = float(loss.detach())
            if not math.isfinite(value):
                why = f"the loss became non-finite at {lr:.2g}"
                break
            average = BETA * average + (1 - BETA) * value
            smoothed = average / (1 - BETA ** (i + 1))
            lrs.append(lr)
            raw.append(value)
            smooth.append(smoothed)
            best = min(best, smoothed)
            if i > 0 and smoothed > DIVERGED * best:
                why = f"the loss passed {DIVERGED:g}x its minimum at {lr:.2g}"
                break
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    suggestion, steepest = suggest(lrs, smooth)
    return LRCurve(lrs, smooth, raw, suggestion, steepest, why)


def suggest(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """(valley, steepest) as fastai computes them, on the curve without its first tenth
    and last five points (the start is noise, the end is divergence)."""
    skip_start, skip_end = len(losses) // 10, 5
    if len(losses) - skip_start - skip_end >= 3:
        lrs, losses = lrs[skip_start : len(lrs) - skip_end], losses[skip_start : len(losses) - skip_end]
    if len(losses) < 2:
        raise ZooAdaptError("the LR finder saw fewer than 2 finite losses: the data gave too few batches")
    n = len(losses)
    # valley: the longest decreasing subsequence, then 2/3 of the way along it
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[end] < run[i]:
            end = i
            start = end - run[end]
    third = (end - start) / 3
    valley = lrs[max(0, min(n - 1, start + int(third) + int(third / 2)))]
    logs = [math.log(lr) for lr in lrs]
    slopes = [(losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(1, n - 1)]
    steepest = lrs[1 + min(range(len(slopes)), key=slopes.__getitem__)] if slopes else lrs[0]
    return float(valley), float(steepest)
