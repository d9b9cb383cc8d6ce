"""Per-group learning rates (discriminative fine-tuning) as optimizer parameter groups."""
from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from .config import OPTIMIZERS, SCHEDULES, SPREADS
from .errors import ZooAdaptError
from .layers import group_parameters


def layer_lrs(n: int, lr: float, lr_body: float | None = None, lr_decay: float | None = None,
              lrs: Sequence[float] | None = None, spread: str = "geometric") -> list[float]:
    """One rate per group, stem first, head (`lr`) last.

    - `lrs`: explicit rates, one per group;
    - `lr_body`: with `spread` "geometric", a geometric spread from `lr_body` at the stem
      to `lr` at the head (fastai's ``slice(lr_body, lr)``); with "flat", `lr_body` for
      every group below the head (Ganin et al.'s DANN recipe: one body rate);
    - `lr_decay`: layer-wise decay, each group below the head gets `lr_decay` times the
      rate of the group above it;
    - none of them: `lr` everywhere.
    """
    if sum(x is not None for x in (lr_body, lr_decay, lrs)) > 1:
        raise ZooAdaptError("give at most one of lrs, lr_body and lr_decay")
    if lrs is not None:
        if len(lrs) != n:
            raise ZooAdaptError(f"{len(lrs)} learning rates given for {n} layer groups")
        return [float(x) for x in lrs]
    if lr_body is not None:
        if lr_body <= 0 or lr <= 0:
            raise ZooAdaptError("learning rates must be positive")
        if n == 1:
            return [float(lr)]
        if spread == "flat":
            return [float(lr_body)] * (n - 1) + [float(lr)]
        if spread != "geometric":
            raise ZooAdaptError(f"unknown rate spread {spread!r}; choices: {', '.join(SPREADS)}")
        return [lr_body * (lr / lr_body) ** (i / (n - 1)) for i in range(n)]
    if lr_decay is not None:
        if not 0 < lr_decay <= 1:
            raise ZooAdaptError(f"lr_decay must be in (0, 1], not {lr_decay}")
        return [lr * lr_decay ** (n - 1 - i) for i in range(n)]
    return [float(lr)] * n


def _no_decay(model: nn.Module) -> set[str]:
    """Biases, norm weights and the names the model itself exempts (timm's no_weight_decay)."""
    names = {n for n, p in model.named_parameters() if p.ndim <= 1}
    exempt = getattr(model, "no_weight_decay", None)
    if callable(exempt):
        skip = set(exempt())
        names |= {n for n, _ in model.named_parameters() if n in skip or n.split(".")[0] in skip}
    return names


def param_groups(model: nn.Module, lr: float, *, lr_body: float | None = None,
                 lr_decay: float | None = None, lrs: Sequence[float] | None = None,
                 weight_decay: float = 0.0, spread: str = "geometric") -> list[dict]:
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
                out.append({"params": chosen, "lr": rate,
                            "weight_decay": weight_decay if decayed else 0.0,
                            "name": name, "group_index": i})
    return out


def make_optimizer(groups: list[dict], name: str = "adamw", momentum: float = 0.9, fused: bool = False):
    """AdamW or SGD over `groups`; `fused` (CUDA only) runs each step as one kernel."""
    import torch

    kw = {"fused": True} if fused else {}
    if name == "adamw":
        return torch.optim.AdamW(groups, **kw)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=momentum, nesterov=momentum > 0, **kw)
    raise ZooAdaptError(f"unknown optimizer {name!r}; choices: {', '.join(OPTIMIZERS)}")


def stage_schedule(plan: Sequence[int], steps_per_epoch: int, schedule: str, warmup: float):
    """The LR multiplier as a function of the global step: `schedule` within each stage
    (a run of epochs with the same freeze boundary), restarting with warm-up whenever the
    boundary moves, so newly unfrozen layers start gently."""
    total = len(plan) * steps_per_epoch

    def factor(step: int) -> float:
        epoch = min(step // steps_per_epoch, len(plan) - 1)
        start = end = epoch
        while start > 0 and plan[start - 1] == plan[epoch]:
            start -= 1
        while end + 1 < len(plan) and plan[end + 1] == plan[epoch]:
            end += 1
        return schedule_factor(schedule, step - start * steps_per_epoch, (end - start + 1) * steps_per_epoch,
                               warmup, step / total)

    return factor


def schedule_factor(schedule: str, step: int, steps: int, warmup: float, progress: float) -> float:
    """Multiplier of each group's base rate at `step` of a stage of `steps` steps.

    Every schedule warms up linearly over the first `warmup` fraction of the stage:
    `onecycle` then anneals (cosine) to 1/25 000 of the rate, `cosine` to zero,
    `constant` stays, and `dann` follows Ganin et al.'s annealing 1 / (1 + 10 p) ** 0.75,
    with `progress` p the fraction of the whole run done."""
    warm = max(1, round(warmup * steps)) if warmup > 0 else 0
    if step < warm:
        start = 1 / 25 if schedule == "onecycle" else 0.0
        t = (step + 1) / warm
        return start + (1 - start) * (0.5 - 0.5 * math.cos(math.pi * t) if schedule == "onecycle" else t)
    t = (step - warm) / max(1, steps - warm)
    if schedule == "onecycle":
        low = 1 / 25 / 1e3
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "constant":
        return 1.0
    if schedule == "dann":
        return 1 / (1 + 10 * progress) ** 0.75
    raise ZooAdaptError(f"unknown schedule {schedule!r}; choices: {', '.join(SCHEDULES)}")
