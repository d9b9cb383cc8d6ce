"""Build a backbone through its plugin, load local weights, swap the head. The engine
never looks at the architecture: plugins say where the head is."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from zoo_adapt.errors import PluginError, ZooAdaptError
from zoo_adapt.model.layers import group_parameters
from zoo_adapt.model.weights import fit_report, looks_like_path, read_state_dict
from zoo_adapt.zoo.answers import describe
from zoo_adapt.zoo.backbone import Backbone, Entry, Head, backbone_of
from zoo_adapt.zoo.plugins import plugin_info
from zoo_adapt.zoo.registry import resolve
from zoo_adapt.zoo.routing import ask


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as e:
        raise ZooAdaptError(f"model has no submodule {path!r}") from e


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    owner = get_submodule(model, parent) if parent else model
    if leaf.isdigit() and isinstance(owner, (nn.Sequential, nn.ModuleList)):
        owner[int(leaf)] = module
    else:
        setattr(owner, leaf, module)


def head_of(model: nn.Module) -> nn.Linear:
    module = get_submodule(model, backbone_of(model).built_head.attr)
    if not isinstance(module, nn.Linear):
        raise ZooAdaptError(f"the head of {backbone_of(model).name!r} is a {type(module).__name__}, not an nn.Linear")
    return module


class HeadFeatures:
    """The features the head receives (the backbone's pooled output), captured by a
    forward pre-hook on the head the plugin names: no architecture special cases. Use
    as a context manager, or call `remove()`."""

    def __init__(self, model: nn.Module):
        self.value: torch.Tensor | None = None
        self._handle = head_of(model).register_forward_pre_hook(self._keep)

    def _keep(self, module, args) -> None:
        self.value = args[0]

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> HeadFeatures:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def num_classes_of(model: nn.Module) -> int:
    return head_of(model).out_features


def swap_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """Replace the classifier with a fresh `num_classes`-way nn.Linear of the same width."""
    if int(num_classes) < 1:
        raise ZooAdaptError(f"num_classes must be at least 1, not {num_classes}")
    attr = backbone_of(model).built_head.attr
    old = head_of(model)
    new = nn.Linear(old.in_features, int(num_classes), bias=old.bias is not None)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    set_submodule(model, attr, new)
    if isinstance(getattr(model, "num_classes", None), int):  # timm models keep this in sync
        setattr(model, "num_classes", int(num_classes))  # noqa: B010
    return new


def _live_head(model: nn.Module, backbone: Backbone) -> Head:
    head = backbone.built_head
    try:
        module = model.get_submodule(head.attr)
    except AttributeError:
        plugin = backbone.answered_by.get("backbone_head", backbone.entry.plugin)
        info = plugin_info(plugin)
        children = [name for name, _ in model.named_children()]
        raise PluginError(
            f"{info.label if info else f'plugin {plugin!r}'} says the head of backbone {backbone.name!r} is "
            f"{head.attr!r}, but the "
            f"{type(model).__name__} it built has no submodule {head.attr!r} (its top-level modules: "
            f"{', '.join(children[:8]) or 'none'}{', ...' if len(children) > 8 else ''})",
            plugin,
            "backbone_head",
        ) from None
    if not isinstance(module, nn.Linear):
        raise ZooAdaptError(
            f"the head of {backbone.name!r} at {head.attr!r} is a "
            f"{type(module).__name__}; zoo-adapt swaps nn.Linear heads only"
        )
    if head.in_features not in (None, module.in_features):
        raise ZooAdaptError(
            f"plugin {backbone.answered_by.get('backbone_head')!r} says the head "
            f"of {backbone.name!r} takes {head.in_features} features, the model "
            f"{module.in_features}"
        )
    return Head(head.attr, module.in_features)


def create_model(
    name: str | Entry,
    num_classes: int | None = None,
    pretrained: bool = True,
    weights: str | Path | None = None,
    drop_path: float | None = None,
    in_chans: int | None = None,
) -> nn.Module:
    """The plain upstream nn.Module (a torchvision or timm model), head swapped to
    `num_classes` outputs when given.

    `weights`: a zoo weights tag (torchvision's ``IMAGENET1K_V1``, a timm pretrained
    tag) or a local .safetensors/.pth file, which is loaded instead of downloading.
    A file whose head has another number of classes (a zoo-adapt export, say) sets
    the number of classes unless `num_classes` is given, in which case only its body
    is used. The result carries its description as ``model.zoo_adapt``.

    `drop_path`: the rate of stochastic depth (timm's ``drop_path_rate``, handed to the
    plugin in the entry's options); a model built without drop-path layers is an error.

    `in_chans`: input channels, 1 (grayscale) or 3 (RGB, the default; None: the entry's,
    as an export records it). For 1 the plugin finds ``in_chans`` in the entry's options
    (timm builds the model so itself); a model that still takes 3 channels has its first
    convolution adapted (`adapt_input_channels`), and its normalization becomes one
    channel's.
    """
    entry = resolve(name) if isinstance(name, str) else name
    if drop_path:
        entry = dataclasses.replace(entry, extra={**entry.extra, "drop_path_rate": float(drop_path)})
    in_chans = int(entry.extra.get("in_chans", 3)) if in_chans is None else int(in_chans)
    if in_chans not in (1, 3):
        raise ZooAdaptError(f"in_chans must be 1 (grayscale) or 3 (RGB), not {in_chans}")
    extra = {k: v for k, v in entry.extra.items() if k != "in_chans"}
    entry = dataclasses.replace(entry, extra={**extra, **({"in_chans": 1} if in_chans == 1 else {})})
    file = None
    if weights is not None:
        if looks_like_path(str(weights)):
            file = Path(weights)
        else:
            entry = dataclasses.replace(entry, weights=str(weights))
    state = read_state_dict(file) if file else None
    plugin, model = ask(entry, "build_backbone", pretrained=bool(pretrained and file is None))
    if model is None:
        raise PluginError(
            f"plugin {plugin!r} did not build backbone {entry.name!r} (build_backbone returned None)",
            plugin,
            "build_backbone",
        )
    if not isinstance(model, nn.Module):
        raise PluginError(
            f"plugin {plugin!r} built {type(model).__name__} for {entry.name!r}, not a torch.nn.Module",
            plugin,
            "build_backbone",
        )
    if drop_path and not any(getattr(m, "drop_prob", 0) > 0 for m in model.modules()):
        raise ZooAdaptError(
            f"--drop-path: {entry.name} ({type(model).__name__}, plugin {plugin!r}) has no drop-path layers; "
            "timm's models take a drop-path rate (timm/NAME, vit_*, efficientnet_lite0), torchvision's do not"
        )
    if in_chans != 3:
        adapt_input_channels(model, in_chans, f"{entry.name} ({type(model).__name__}, plugin {plugin!r})")
    backbone = describe(entry, model)
    initial = str(file) if file else (entry.weights or "default") if pretrained else None
    norm = backbone.normalization
    backbone = dataclasses.replace(
        backbone,
        normalization=norm.with_channels(in_chans) if norm is not None else None,
        head=_live_head(model, backbone),
        initial_weights=initial,
        answered_by={"build_backbone": plugin, **backbone.answered_by},
    )
    setattr(model, "zoo_adapt", backbone)  # noqa: B010 (the description travels with the module)
    group_parameters(model)  # fail now, naming the plugin, if its groups are wrong
    if state is not None and file is not None:
        state = _fit_state_dict(model, entry, state, file)
        head_key = f"{backbone.built_head.attr}.weight"
        file_classes = state[head_key].shape[0] if head_key in state else None
        if num_classes is None and file_classes not in (None, head_of(model).out_features):
            num_classes = file_classes
    if num_classes is not None:
        swap_head(model, num_classes)
    if state is not None and file is not None:
        _load(model, state, file)
    return model


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """(name, module) of the convolution that takes the image: the first nn.Conv2d the
    model registers (stems come first in torchvision's and timm's models), or None."""
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def adapt_input_channels(model: nn.Module, in_chans: int, what: str = "the model") -> None:
    """Make `model` take `in_chans` input channels as timm does for pretrained weights:
    its first convolution, if it takes 3 channels, is replaced by one taking `in_chans`,
    whose kernels are timm's `adapt_input_conv` of the RGB ones (for one channel, their
    sum: a grey image then gives the stem the response its RGB copy gave). A model
    whose first convolution already takes `in_chans` is left as it is; anything else
    is an error naming `what`."""
    from timm.models import adapt_input_conv

    found = first_conv(model)
    if found is not None and found[1].in_channels == in_chans:
        return
    if found is None or found[1].in_channels != 3 or found[1].groups != 1:
        seen = "no nn.Conv2d" if found is None else f"its first nn.Conv2d ({found[0]}) takes {found[1].in_channels}"
        raise ZooAdaptError(
            f"--in-chans {in_chans}: cannot adapt {what} to {in_chans}-channel input: {seen}, "
            "not a 3-channel convolution to sum the RGB kernels of"
        )
    name, old = found
    new = nn.Conv2d(
        in_chans,
        old.out_channels,
        old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    ).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(in_chans, old.weight.detach()))
        if old.bias is not None and new.bias is not None:
            new.bias.copy_(old.bias)
    new.train(old.training)
    set_submodule(model, name, new)


def grad_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass instead of keeping them (timm's
    `set_grad_checkpointing`): less memory for a slower step. An error for a model
    without it."""
    switch = getattr(model, "set_grad_checkpointing", None)
    if not callable(switch):
        name = backbone_of(model).name
        raise ZooAdaptError(
            f"--grad-checkpointing: {name} ({type(model).__name__}) has no set_grad_checkpointing; "
            "timm's models have it (timm/NAME, vit_*, efficientnet_lite0)"
        )
    switch(True)


def _fit_state_dict(model: nn.Module, entry: Entry, state: dict, file: Path) -> dict:
    own = model.state_dict()
    head = backbone_of(model).built_head.attr
    state = _adapted_input(model, state)
    if fit_report(own, state, skip=(head,)) is not None:
        _, converted = ask(entry, "convert_state_dict", state_dict=state, model=model)
        if converted is not None:
            state = converted
        state = _adapted_input(model, state)
    problem = fit_report(own, state, skip=(head,))
    if problem:
        raise ZooAdaptError(f"weights file {file} does not fit backbone {entry.name!r}: {problem}")
    return state


def _adapted_input(model: nn.Module, state: dict) -> dict:
    """RGB weights (`--weights FILE`) for a one-channel model: the file's first
    convolution kernels summed over their 3 input channels, as the model's were."""
    found = first_conv(model)
    key = f"{found[0]}.weight" if found else ""
    tensor = state.get(key)
    if found is None or tensor is None or tensor.ndim != 4 or tensor.shape[1] != 3 or found[1].in_channels == 3:
        return state
    from timm.models import adapt_input_conv

    return {**state, key: adapt_input_conv(found[1].in_channels, tensor)}


def _load(model: nn.Module, state: dict, file: Path) -> None:
    """Load the body strictly; the head only where its shape fits (else it stays new)."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if own[k].shape == v.shape}
    missing, _ = model.load_state_dict(state, strict=False)
    head = backbone_of(model).built_head.attr
    if any(not (k == head or k.startswith(head + ".")) for k in missing):
        raise ZooAdaptError(f"weights file {file} left parameters unset: {missing[:3]}")


def load_state_dict_into(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Strict load with a one-line error naming `what` on any mismatch."""
    problem = fit_report(model.state_dict(), state)
    if problem:
        raise ZooAdaptError(f"{what} does not fit the model: {problem}")
    model.load_state_dict(state, strict=True)
