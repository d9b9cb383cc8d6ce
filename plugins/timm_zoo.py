"""Any timm model as `timm/<name>`: head, layer groups and normalization come from
timm's own metadata (pretrained_cfg, get_classifier, group_matcher), so one plugin
serves every timm architecture. Static facts for `zoo-adapt list` come from the
registry entry (head, in_features, num_groups, mean, std, ...)."""

from __future__ import annotations

import os

from zoo_adapt.plugin_api import Head, LayerGroup, hookimpl

from . import _timm


def _classifier(model) -> str:
    name = model.pretrained_cfg.get("classifier") or "head"
    return name[0] if isinstance(name, (tuple, list)) else name


@hookimpl
def build_backbone(entry, pretrained):
    return _timm.build(entry, pretrained, entry.weights)


@hookimpl
def backbone_head(entry, model):
    if model is not None:
        attr = _classifier(model)
        return Head(attr, getattr(model.get_submodule(attr), "in_features", None))


@hookimpl
def backbone_groups(entry, model):
    if model is None:
        return None
    from timm.models import group_parameters

    head = _classifier(model)
    in_head = lambda n: n.startswith(head + ".")  # noqa: E731
    grouped = group_parameters(model, model.group_matcher(coarse=True))
    position = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    bodies = [body for body in (tuple(n for n in names if not in_head(n)) for names in grouped.values()) if body]
    bodies.sort(key=lambda body: min(position[n] for n in body))  # stem to head in parameter order
    groups = [LayerGroup(_common_prefix(body) or f"group{i}", body) for i, body in enumerate(bodies)]
    return groups + [LayerGroup("head", (head,))]


def _common_prefix(names: tuple[str, ...]) -> str:
    """`stages.1` for stages.1.downsample.0.weight, stages.1.blocks.0.gamma, ..."""
    parts = os.path.commonprefix([n.split(".") for n in names])
    return ".".join(parts[:2])


@hookimpl
def backbone_normalization(entry, model):
    if model is not None:
        return _timm.normalization(model)


@hookimpl
def backbone_source(entry):
    return _timm.source(entry)
