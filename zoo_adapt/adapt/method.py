"""What an adaptation method is: the base class plugins subclass, the gradient
reversal layer, and building a method a plugin registered. Torch only, no training
loop: a plugin (or its tests) imports this without pulling in zoo-adapt's engine. The
loop callback that uses methods is adapt/callback.py."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from zoo_adapt.zoo.methods import method_info, resolve_options
from zoo_adapt.zoo.routing import build


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by -lambda (Ganin et
    al. 2016). Whatever sits behind it learns to make what is in front of it fail."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = float(lambda_)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lambda_ * grad, None


def grad_reverse(x: torch.Tensor, lambda_: float) -> torch.Tensor:
    return GradientReversal.apply(x, lambda_)


class AdaptationMethod(nn.Module):
    """Base class of adaptation methods. `config` is the run's FinetuneConfig (its
    `adapt_weight`...); `options` are the method's own, as its plugin declared them
    (`register(..., options=[option(...)])`), every one resolved: the given value,
    checked, or the default. Submodules (a domain classifier, say) train at the head's
    learning rate; override `param_groups` for more. A method whose loss needs no target
    images in the step's forward pass sets `forwards_target = False`: the steps are then
    the source's alone (BatchNorm sees source batches only)."""

    forwards_target = True

    def __init__(self, in_features: int, num_classes: int, config: Any):
        super().__init__()
        self.in_features, self.num_classes, self.config = in_features, num_classes, config
        self.options: dict[str, Any] = dict(getattr(config, "adapt_options", None) or {})

    def loss(
        self,
        source_features: torch.Tensor,
        target_features: torch.Tensor,
        source_logits: torch.Tensor,
        target_logits: torch.Tensor,
        progress: float,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The method's loss term for one step (added to the source cross-entropy) and the
        figures to log (tensors or numbers; averaged over the epoch). `progress` is the
        fraction of all optimizer steps done."""
        raise NotImplementedError

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """The optimizer groups of the method's parameters, given the head's rate."""
        params = [p for p in self.parameters() if p.requires_grad]
        return (
            [{"params": params, "lr": lr, "weight_decay": weight_decay, "name": "adaptation", "group_index": -1}]
            if params
            else []
        )


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of `model` (1d, 2d, 3d, synchronised), in module order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def make_method(name: str, in_features: int, num_classes: int, config: Any) -> AdaptationMethod:
    """Build method `name` for a head taking `in_features` and `num_classes` outputs;
    the method sees `config` with its options resolved (`config.adapt_options`)."""
    info = method_info(name)
    options = resolve_options(name, getattr(config, "adapt_options", None) or {})
    config = copy.copy(config)  # the caller's stays as given
    config.adapt_options = options
    return build(
        info.plugin,
        f"adaptation method {name!r}",
        info.factory,
        AdaptationMethod,
        in_features=in_features,
        num_classes=num_classes,
        config=config,
    )
