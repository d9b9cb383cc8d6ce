"""Per-group learning rates (discriminative fine-tuning) as optimizer parameter groups."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from zoo_adapt.model.layers import group_parameters
from zoo_adapt.model.recipes import OPTIMIZERS, choose, layer_lrs


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
    """AdamW or SGD over `groups`; `fused` (CUDA only) runs each step as one kernel."""
    choose("optimizer", name, OPTIMIZERS)
    if name == "adamw":
        return torch.optim.AdamW(groups, fused=fused or None)
    return torch.optim.SGD(groups, momentum=momentum, nesterov=momentum > 0, fused=fused or None)
