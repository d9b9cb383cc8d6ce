"""Layer groups applied to a model: which parameters each group holds, freezing up to a
group, and the BatchNorm policy for frozen groups."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.model.recipes import BN_POLICIES, choose
from zoo_adapt.zoo.backbone import backbone_of


def group_parameters(model: nn.Module) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """[(group name, [(param name, param), ...]), ...] stem to head, checked to hold
    every parameter exactly once, in the model's parameter order (groups listed head
    first would otherwise freeze the head and train the stem, silently)."""
    backbone = backbone_of(model)
    groups = backbone.built_groups
    out: list[tuple[str, list]] = [(g.name, []) for g in groups]
    blame = f"layer groups of {backbone.name!r} (plugin {backbone.answered_by.get('backbone_groups')!r})"
    latest = 0
    for name, param in model.named_parameters():
        owners = [i for i, g in enumerate(groups) if g.owns(name)]
        if len(owners) != 1:
            where = "no group" if not owners else "groups " + " and ".join(repr(groups[i].name) for i in owners)
            raise ZooAdaptError(f"{blame}: parameter {name!r} is in {where}, not exactly one")
        if owners[0] < latest:
            raise ZooAdaptError(
                f"{blame}: parameter {name!r} (group {groups[owners[0]].name!r}) comes after "
                f"group {groups[latest].name!r}; groups must run stem to head"
            )
        latest = owners[0]
        out[owners[0]][1].append((name, param))
    empty = [n for n, params in out if not params]
    if empty:
        raise ZooAdaptError(f"{blame}: group {empty[0]!r} holds no parameter")
    head = backbone.built_head.attr
    head_params = [n for n, _ in model.named_parameters() if n.startswith(head + ".")]
    if not out or not head_params or any(n not in dict(out[-1][1]) for n in head_params):
        raise ZooAdaptError(f"{blame}: the last group must hold the head {head!r}")
    return out


def num_groups(model: nn.Module) -> int:
    return len(group_parameters(model))


def _group_index(model: nn.Module) -> dict[str, int]:
    return {n: i for i, (_, params) in enumerate(group_parameters(model)) for n, _ in params}


def freeze_to(model: nn.Module, k: int, bn: str = "train") -> nn.Module:
    """Freeze groups below `k` (negative counts from the end, as fastai's freeze_to), make
    the others trainable.

    `bn="train"` (default, fastai's train_bn): BatchNorm layers stay trainable and keep
    updating their running statistics even inside frozen groups, so features follow the
    new data. `bn="frozen"`: BatchNorm layers in frozen groups are frozen too and use their
    pretrained statistics in training as well (they are kept in eval mode).
    """
    choose("BatchNorm policy", bn, BN_POLICIES)
    index = _group_index(model)
    n = max(index.values()) + 1
    if not -n <= k <= n:
        raise ZooAdaptError(f"freeze_to({k}): the model has {n} layer groups")
    k = k % n if k < 0 else k
    for name, param in model.named_parameters():
        param.requires_grad_(index[name] >= k)
    for mname, module in model.named_modules():
        if not isinstance(module, _BatchNorm):
            continue
        own = [f"{mname}.{p}" for p, _ in module.named_parameters(recurse=False)]
        frozen_group = bool(own) and index[own[0]] < k
        if frozen_group and bn == "train":
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)
        _keep_bn_eval(module, frozen_group and bn == "frozen")
    return model


def freeze(model: nn.Module, bn: str = "train") -> nn.Module:
    """Freeze everything but the head: a linear probe (feature extraction)."""
    return freeze_to(model, -1, bn=bn)


def unfreeze(model: nn.Module) -> nn.Module:
    """Make every group trainable (and let every BatchNorm layer train again)."""
    return freeze_to(model, 0)


def trainable_groups(model: nn.Module) -> list[bool]:
    """For each group, whether any of its parameters (beyond BatchNorm's) is trainable."""
    bn_params = {
        f"{m}.{p}"
        for m, mod in model.named_modules()
        if isinstance(mod, _BatchNorm)
        for p, _ in mod.named_parameters(recurse=False)
    }
    return [
        any(p.requires_grad for n, p in params if n not in bn_params) or all(p.requires_grad for _, p in params)
        for _, params in group_parameters(model)
    ]


def _force_eval(module: nn.Module, args) -> None:
    module.training = False


def _keep_bn_eval(module: nn.Module, keep: bool) -> None:
    """Keep a BatchNorm layer on its running statistics whatever model.train() says."""
    handle = getattr(module, "_zoo_adapt_eval_hook", None)
    if keep and handle is None:
        setattr(module, "_zoo_adapt_eval_hook", module.register_forward_pre_hook(_force_eval))  # noqa: B010
        module.training = False
    elif not keep and handle is not None:
        handle.remove()
        del module._zoo_adapt_eval_hook
