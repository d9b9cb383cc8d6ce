"""Per-group learning rates (discriminative fine-tuning) as optimizer parameter groups."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .errors import ZooAdaptError
from .layers import group_parameters


def layer_lrs(n: int, lr: float, lr_body: float | None = None, lr_decay: float | None = None,
              lrs: Sequence[float] | None = None) -> list[float]:
    """One rate per group, stem first, head (`lr`) last.

    - `lrs`: explicit rates, one per group;
    - `lr_body`: a geometric spread from `lr_body` at the stem to `lr` at the head
      (fastai's ``slice(lr_body, lr)``);
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
                 weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups, one or two per layer group (weight decay is not applied
    to biases and norm parameters). Every parameter is included, frozen ones too, so
    unfreezing later needs no new optimizer; each group carries its layer group's `name`
    and `group_index`."""
    groups = group_parameters(model)
    rates = layer_lrs(len(groups), lr, lr_body=lr_body, lr_decay=lr_decay, lrs=lrs)
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
