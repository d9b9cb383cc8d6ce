"""Ask the plugins about a backbone and collect the answers into a Backbone: what
`zoo-adapt list` shows (without building anything), and what create_model attaches to
a built model. Each answer remembers who gave it, for `zoo-adapt info`."""

from __future__ import annotations

from typing import Any

from zoo_adapt.errors import PluginError
from zoo_adapt.zoo.backbone import Backbone, Entry, Head, LayerGroup, Normalization, Source
from zoo_adapt.zoo.plugins import require
from zoo_adapt.zoo.registry import resolve
from zoo_adapt.zoo.routing import ask


def describe(backbone: str | Entry, model: Any = None) -> Backbone:
    """Ask the plugins about a backbone. Without `model`, only what they know statically
    (plus static facts the registry entry declares); with it, the full answer."""
    entry = resolve(backbone) if isinstance(backbone, str) else backbone
    require(entry.plugin, f"backbone {entry.name!r}")
    answered: dict[str, str] = {}
    asked: dict[str, str] = {}

    def get(hook: str, kind: type, **kwargs: Any) -> Any:
        plugin, value = ask(entry, hook, **kwargs)
        asked[hook] = plugin
        if value is None:
            return None
        if isinstance(value, list) and kind is tuple:
            value = tuple(value)
        if not isinstance(value, kind) or (
            isinstance(value, tuple) and not all(isinstance(g, LayerGroup) for g in value)
        ):
            raise PluginError(
                f"plugin {plugin!r} answered {hook} for {entry.name!r} with "
                f"{type(value).__name__}, not {kind.__name__}",
                plugin,
                hook,
            )
        answered[hook] = plugin
        return value

    x = entry.extra
    head = get("backbone_head", Head, model=model)
    if head is None and "head" in x:
        head, answered["backbone_head"] = Head(x["head"], x.get("in_features")), entry.origin
    groups = get("backbone_groups", tuple, model=model)
    norm = get("backbone_normalization", Normalization, model=model)
    if norm is None and "mean" in x and "std" in x:
        norm, answered["backbone_normalization"] = Normalization.from_dict(x), entry.origin
    source = get("backbone_source", Source) or Source(library="unknown", status="unknown")
    if model is not None:
        for hook, value in (("backbone_head", head), ("backbone_groups", groups), ("backbone_normalization", norm)):
            if value is None:
                raise PluginError(
                    f"plugin {asked[hook]!r} did not answer {hook} for backbone {entry.name!r} (a required hook)",
                    asked[hook],
                    hook,
                )
    num_groups = len(groups) if groups else x.get("num_groups")
    return Backbone(entry, head, norm, source, groups, num_groups, answered)
