"""torchvision EfficientNet-B0..B7 and EfficientNetV2-S/M/L. The names users type and
their default weights are in registry.toml; here are the architecture facts."""

from __future__ import annotations

from zoo_adapt.plugin_api import (
    IMAGENET,
    INCEPTION,
    Head,
    LayerGroup,
    Normalization,
    ZooAdaptError,
    hookimpl,
)

from . import _torchvision

# upstream id: (penultimate width, number of stages in `features`)
ARCHS = {
    "efficientnet_b0": (1280, 7),
    "efficientnet_b1": (1280, 7),
    "efficientnet_b2": (1408, 7),
    "efficientnet_b3": (1536, 7),
    "efficientnet_b4": (1792, 7),
    "efficientnet_b5": (2048, 7),
    "efficientnet_b6": (2304, 7),
    "efficientnet_b7": (2560, 7),
    "efficientnet_v2_s": (1280, 6),
    "efficientnet_v2_m": (1280, 7),
    "efficientnet_v2_l": (1280, 7),
}
# (upstream, weights): (crop, resize, interpolation, stats, file), from torchvision's enums
RECIPES = {
    ("efficientnet_b0", "IMAGENET1K_V1"): (224, 256, "bicubic", IMAGENET, "efficientnet_b0_rwightman-7f5810bc.pth"),
    ("efficientnet_b1", "IMAGENET1K_V1"): (240, 256, "bicubic", IMAGENET, "efficientnet_b1_rwightman-bac287d4.pth"),
    ("efficientnet_b1", "IMAGENET1K_V2"): (240, 255, "bilinear", IMAGENET, "efficientnet_b1-c27df63c.pth"),
    ("efficientnet_b2", "IMAGENET1K_V1"): (288, 288, "bicubic", IMAGENET, "efficientnet_b2_rwightman-c35c1473.pth"),
    ("efficientnet_b3", "IMAGENET1K_V1"): (300, 320, "bicubic", IMAGENET, "efficientnet_b3_rwightman-b3899882.pth"),
    ("efficientnet_b4", "IMAGENET1K_V1"): (380, 384, "bicubic", IMAGENET, "efficientnet_b4_rwightman-23ab8bcd.pth"),
    ("efficientnet_b5", "IMAGENET1K_V1"): (456, 456, "bicubic", IMAGENET, "efficientnet_b5_lukemelas-1a07897c.pth"),
    ("efficientnet_b6", "IMAGENET1K_V1"): (528, 528, "bicubic", IMAGENET, "efficientnet_b6_lukemelas-24a108a5.pth"),
    ("efficientnet_b7", "IMAGENET1K_V1"): (600, 600, "bicubic", IMAGENET, "efficientnet_b7_lukemelas-c5b4e57e.pth"),
    ("efficientnet_v2_s", "IMAGENET1K_V1"): (384, 384, "bilinear", IMAGENET, "efficientnet_v2_s-dd5fe13b.pth"),
    ("efficientnet_v2_m", "IMAGENET1K_V1"): (480, 480, "bilinear", IMAGENET, "efficientnet_v2_m-dc08266a.pth"),
    ("efficientnet_v2_l", "IMAGENET1K_V1"): (480, 480, "bicubic", INCEPTION, "efficientnet_v2_l-59c71312.pth"),
}


def _arch(entry):
    if entry.upstream not in ARCHS:
        raise ZooAdaptError(f"plugin {entry.plugin} serves {', '.join(ARCHS)}, not {entry.upstream!r}")
    return ARCHS[entry.upstream]


@hookimpl
def build_backbone(entry, pretrained):
    _arch(entry)
    return _torchvision.build(entry, pretrained)


@hookimpl
def backbone_head(entry):
    return Head("classifier.1", _arch(entry)[0])


@hookimpl
def backbone_groups(entry):
    stages = _arch(entry)[1]
    return (
        [LayerGroup("stem", ("features.0",))]
        + [LayerGroup(f"stage{i}", (f"features.{i}",)) for i in range(1, stages + 1)]
        + [LayerGroup("head_conv", (f"features.{stages + 1}",)), LayerGroup("head", ("classifier",))]
    )


@hookimpl
def backbone_normalization(entry, model):
    tag = _torchvision.tag(entry, model)
    if tag is None:
        return None
    recipe = RECIPES.get((entry.upstream, tag))
    if recipe is None:
        raise ZooAdaptError(f"torchvision has no weights {tag!r} for {entry.upstream}")
    crop, resize, interpolation, stats, _ = recipe
    return Normalization(**stats, input_size=(3, crop, crop), interpolation=interpolation, crop_pct=crop / resize)


@hookimpl
def backbone_source(entry):
    return _torchvision.source(entry, {key: recipe[-1] for key, recipe in RECIPES.items()})
