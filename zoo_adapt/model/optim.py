"""Per-group learning rates (discriminative fine-tuning) as optimizer parameter groups."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from zoo_adapt.model.layers import group_parameters
from zoo_adapt.model.recipes import (
    OPTIMIZERS,
    TIMM_SCHEDULES,
    choose,
    layer_lrs,
    schedule_factor,
    warmup_steps,
)


def _no_decay(model: nn.Module) -> set[str]:
    """Biases, norm weights and the names the model itself exempts (timm's no_weight_decay)."""
    names = {n for n, p in model.named_parameters() if p.ndim <= 1}
    exempt = getattr(model, "no_weight_decay", None)
    if callable(exempt):
        skip = set(exempt())
        names |= {n for n, _ in model.named_parameters() if n in skip or n.split(".")[0] in skip}
    return names


def param_groups(
    model: nn.Module,
    lr: float,
    *,
    lr_body: float | None = None,
    lr_decay: float | None = None,
    lrs: Sequence[float] | None = None,
    weight_decay: float = 0.0,
    spread: str = "geometric",
) -> list[dict]:
    """Optimizer parameter groups, one or two per layer group (weight decay is not applied
    to biases and norm parameters). Every parameter is included, frozen ones too, so
    unfreezing later needs no new optimizer; each group carries its layer group's `name`
    and `group_index`."""
    groups = group_parameters(model)
    rates = layer_lrs(len(groups), lr, lr_body=lr_body, lr_decay=lr_decay, lrs=lrs, spread=spread)
    no_decay = _no_decay(model)
    out = []
    for i, ((name, params), rate) in enumerate(zip(groups, rates)):
        for decayed in (True, False):
            chosen = [p for n, p in params if (n not in no_decay) == decayed]
            if chosen:
                out.append(
                    {
                        "params": chosen,
                        "lr": rate,
                        "weight_decay": weight_decay if decayed else 0.0,
                        "name": name,
                        "group_index": i,
                    }
                )
    return out


def make_optimizer(groups: list[dict], name: str = "adamw", momentum: float = 0.9, fused: bool = False):
    """timm's optimizer `name` (timm.optim.create_optimizer_v2) over `groups`, each group
    keeping its rate, weight decay and names; `fused` (CUDA only) runs AdamW's and SGD's
    step as one kernel. `sgd` is Nesterov SGD, plain SGD with momentum 0."""
    choose("optimizer", name, OPTIMIZERS)
    from timm.optim import create_optimizer_v2  # timm is imported when a run builds its model

    if name == "sgd" and momentum == 0:
        name = "momentum"  # timm's plain SGD (its "sgd" is Nesterov's, which needs a momentum)
    extra: dict[str, Any] = {"fused": True} if fused and name in ("adamw", "sgd", "momentum") else {}
    # the first group's rate as the default: optimizers that choose their own rate without one
    # (Adafactor) follow the groups' rates instead
    return create_optimizer_v2(groups, name, lr=groups[0]["lr"] if groups else None, momentum=momentum, **extra)


@functools.lru_cache(maxsize=32)
def _timm_shape(schedule: str, steps: int):
    """timm's scheduler of `schedule` over a stage of `steps` steps at rate 1, on a
    stand-in optimizer: its rate at step t is the stage's multiplier."""
    from timm.scheduler import PolyLRScheduler, StepLRScheduler, TanhLRScheduler

    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    steps = max(1, steps)
    if schedule == "step":
        return StepLRScheduler(stand_in, decay_t=max(1, math.ceil(steps / 3)), decay_rate=0.1, t_in_epochs=False)
    if schedule == "poly":
        return PolyLRScheduler(stand_in, t_initial=steps, power=0.5, t_in_epochs=False)
    return TanhLRScheduler(stand_in, t_initial=steps, t_in_epochs=False)


def schedule_shape(schedule: str, step: int, steps: int, warmup: float, progress: float) -> float:
    """`recipes.schedule_factor`, with timm's schedules (recipes.TIMM_SCHEDULES) after
    zoo-adapt's own linear warm-up; pass it to `recipes.stage_schedule`, which restarts
    it with each stage."""
    if schedule not in TIMM_SCHEDULES:
        return schedule_factor(schedule, step, steps, warmup, progress)
    warm = warmup_steps(warmup, steps)
    if step < warm:
        return schedule_factor("constant", step, steps, warmup, progress)
    scheduler = _timm_shape(schedule, steps - warm)
    scheduler.step_update(step - warm)
    return float(scheduler.optimizer.param_groups[0]["lr"])
