"""torchvision ResNet-18/34/50/101/152 with torchvision's weight enums. The names users
type and their default weights are in registry.toml; here are the architecture facts."""

from __future__ import annotations

from zoo_adapt.plugin_api import IMAGENET, Head, LayerGroup, Normalization, ZooAdaptError, hookimpl

from . import _torchvision

# upstream id: penultimate width
WIDTH = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}
# Shorter side before the 224 crop, per weights recipe (torchvision's ImageClassification).
RESIZE = {"IMAGENET1K_V1": 256, "IMAGENET1K_V2": 232}
WEIGHT_FILES = {
    ("resnet18", "IMAGENET1K_V1"): "resnet18-f37072fd.pth",
    ("resnet34", "IMAGENET1K_V1"): "resnet34-b627a593.pth",
    ("resnet50", "IMAGENET1K_V1"): "resnet50-0676ba61.pth",
    ("resnet50", "IMAGENET1K_V2"): "resnet50-11ad3fa6.pth",
    ("resnet101", "IMAGENET1K_V1"): "resnet101-63fe2227.pth",
    ("resnet101", "IMAGENET1K_V2"): "resnet101-cd907fc2.pth",
    ("resnet152", "IMAGENET1K_V1"): "resnet152-394f9c45.pth",
    ("resnet152", "IMAGENET1K_V2"): "resnet152-f82ba261.pth",
}


def _width(entry) -> int:
    if entry.upstream not in WIDTH:
        raise ZooAdaptError(f"plugin {entry.plugin} serves {', '.join(WIDTH)}, not {entry.upstream!r}")
    return WIDTH[entry.upstream]


@hookimpl
def build_backbone(entry, pretrained):
    _width(entry)
    return _torchvision.build(entry, pretrained)


@hookimpl
def backbone_head(entry):
    return Head("fc", _width(entry))


@hookimpl
def backbone_groups(entry):
    _width(entry)
    return (
        [LayerGroup("stem", ("conv1", "bn1"))]
        + [LayerGroup(f"layer{i}", (f"layer{i}",)) for i in range(1, 5)]
        + [LayerGroup("head", ("fc",))]
    )


@hookimpl
def backbone_normalization(entry, model):
    tag = _torchvision.tag(entry, model)
    if tag:
        return Normalization(
            **IMAGENET, input_size=(3, 224, 224), interpolation="bilinear", crop_pct=224 / RESIZE.get(tag, 256)
        )


@hookimpl
def backbone_source(entry):
    return _torchvision.source(entry, WEIGHT_FILES)
