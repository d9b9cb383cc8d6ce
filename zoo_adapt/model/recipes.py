"""The training recipes a run is described by, each name beside what it means:
strategies (which layer groups train in which epoch), learning-rate spreads over the
layer groups, schedules, optimizers and BatchNorm policies for frozen groups. Plain
Python: the job's options (job/config.py) and the CLI's choices come from here without
torch, and the engine and model surgery apply the same definitions."""

from __future__ import annotations

import math
from collections.abc import Sequence

from zoo_adapt.errors import ZooAdaptError, quote

# strategy -> what trains; the freeze boundary of each epoch is `freeze_plan`'s
STRATEGIES = {
    "linear-probe": "the head alone on fixed features (BatchNorm statistics frozen too)",
    "finetune": "everything from the start, discriminative rates",
    "two-stage": "the head alone for head_epochs, then everything (fastai's fine_tune)",
    "gradual": "one more layer group every unfreeze_every epochs, from the top down",
}
# how the layer groups below the head get their rates from lr_body (`layer_lrs`)
SPREADS = {
    "geometric": "from lr_body at the stem up to lr at the head (fastai's slice(lr_body, lr))",
    "flat": "lr_body for every group below the head (Ganin et al.'s one body rate)",
}
# schedule -> its shape within a stage (`schedule_factor`; the timm ones: model/optim.schedule_shape)
SCHEDULES = {
    "onecycle": "warm-up from 1/25, then cosine annealing to 1/25000",
    "cosine": "warm-up from 0, then cosine annealing to 0",
    "constant": "warm-up from 0, then the base rate",
    "dann": "Ganin et al.'s 1 / (1 + 10 p) ** 0.75 over the whole run",
    "step": "warm-up from 0, then timm's StepLRScheduler: x0.1 after each third of the stage",
    "poly": "warm-up from 0, then timm's PolyLRScheduler: (1 - t) ** 0.5 down to 0",
    "tanh": "warm-up from 0, then timm's TanhLRScheduler: 0.5 (1 - tanh(-7 + 10 t)) down to 0",
}
# Shapes of timm.scheduler, as functions of the step within a stage (t: the fraction of the stage
# after warm-up), so that they restart with each stage like zoo-adapt's own. timm's cosine is the
# same shape as "cosine"; its PlateauLRScheduler is left out: it lowers the rate when a validation
# score stops improving, which is no function of the step (it would neither restart per stage nor
# replay exactly on --resume).
TIMM_SCHEDULES = ("step", "poly", "tanh")
# optimizer -> what it is: timm's optimizer of that name (timm.optim.create_optimizer_v2, built by
# model/optim.make_optimizer over zoo-adapt's parameter groups, each keeping its rate and weight decay)
OPTIMIZERS = {
    "adamw": "AdamW (torch.optim.AdamW, fused on CUDA)",
    "sgd": "SGD with Nesterov momentum (--momentum; plain SGD with --momentum 0)",
    "adam": "Adam (weight decay added to the gradient, L2)",
    "nadamw": "NAdam with decoupled weight decay (timm)",
    "radam": "rectified Adam (torch.optim.RAdam)",
    "adamp": "AdamP: Adam without the norm growth of scale-invariant weights (timm)",
    "sgdp": "SGDP: SGD with Nesterov momentum without that norm growth (timm)",
    "lamb": "LAMB: layer-wise trust ratios over Adam steps, for large batches (timm)",
    "lars": "LARS: layer-wise trust ratios over SGD steps, for large batches (timm)",
    "lion": "Lion: the sign of a momentum, rates 3-10x below AdamW's (timm)",
    "adafactor": "Adafactor: factored second moments, little optimizer memory (timm)",
    "adafactorbv": "Adafactor as Big Vision trains ViTs (timm)",
    "adan": "Adan: Nesterov-accelerated adaptive moments (timm)",
    "adopt": "ADOPT: Adam that converges for any beta2 (timm)",
    "laprop": "LaProp: momentum over RMSProp-normalised gradients (timm)",
    "madgrad": "MADGRAD: momentumized dual averaging (timm)",
    "rmsproptf": "RMSProp as TensorFlow defines it, EfficientNet's recipe (timm)",
}
# head learning rates when --lr is not given (others: 2e-3)
DEFAULT_LRS = {"sgd": 2e-2, "sgdp": 2e-2, "lars": 2e-2, "lion": 2e-4}
# BatchNorm layers inside frozen groups (applied by model/layers.freeze_to)
BN_POLICIES = {
    "train": "keep training and updating their statistics (fastai's train_bn)",
    "frozen": "frozen, in eval mode, on their pretrained statistics",
}


def choose(kind: str, name: str, table: dict) -> str:
    """`name` if `table` knows it, else a one-line error listing the choices."""
    if name not in table:
        raise ZooAdaptError(f"unknown {kind} {quote(name)}; choices: {', '.join(table)}")
    return name


def freeze_plan(strategy: str, epochs: int, n_groups: int, head_epochs: int = 1, unfreeze_every: int = 1) -> list[int]:
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


def layer_lrs(
    n: int,
    lr: float,
    lr_body: float | None = None,
    lr_decay: float | None = None,
    lrs: Sequence[float] | None = None,
    spread: str = "geometric",
) -> list[float]:
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


def stage_schedule(plan: Sequence[int], steps_per_epoch: int, schedule: str, warmup: float, shape=None):
    """The LR multiplier as a function of the global step: `schedule` within each stage
    (a run of epochs with the same freeze boundary), restarting with warm-up whenever the
    boundary moves, so newly unfrozen layers start gently. `shape`: the function giving
    a stage's multipliers (`schedule_factor`'s arguments; model/optim.schedule_shape adds
    timm's schedules)."""
    total = len(plan) * steps_per_epoch
    shape = shape or schedule_factor

    def factor(step: int) -> float:
        epoch = min(step // steps_per_epoch, len(plan) - 1)
        start = end = epoch
        while start > 0 and plan[start - 1] == plan[epoch]:
            start -= 1
        while end + 1 < len(plan) and plan[end + 1] == plan[epoch]:
            end += 1
        return shape(
            schedule, step - start * steps_per_epoch, (end - start + 1) * steps_per_epoch, warmup, step / total
        )

    return factor


def warmup_steps(warmup: float, steps: int) -> int:
    """Steps of a stage's warm-up (at least one when there is any)."""
    return max(1, round(warmup * steps)) if warmup > 0 else 0


def schedule_factor(schedule: str, step: int, steps: int, warmup: float, progress: float) -> float:
    """Multiplier of each group's base rate at `step` of a stage of `steps` steps.

    Every schedule warms up linearly over the first `warmup` fraction of the stage:
    `onecycle` then anneals (cosine) to 1/25 000 of the rate, `cosine` to zero,
    `constant` stays, and `dann` follows Ganin et al.'s annealing 1 / (1 + 10 p) ** 0.75,
    with `progress` p the fraction of the whole run done."""
    warm = warmup_steps(warmup, steps)
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
    if schedule in TIMM_SCHEDULES:
        raise ZooAdaptError(f"schedule {schedule!r} is timm's: build it with model.optim.schedule_shape")
    raise ZooAdaptError(f"unknown schedule {schedule!r}; choices: {', '.join(SCHEDULES)}")
