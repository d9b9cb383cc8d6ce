"""torchvision ResNet-18/34/50/101/152 with torchvision's weight enums."""
from __future__ import annotations

from zoo_adapt import hookimpl
from zoo_adapt.backbone import IMAGENET, Head, LayerGroup, Normalization
from zoo_adapt.errors import ZooAdaptError

from . import _torchvision

PLUGIN = "resnet"
# upstream id: (penultimate width, default weights)
ARCHS = {
    "resnet18": (512, "IMAGENET1K_V1"),
    "resnet34": (512, "IMAGENET1K_V1"),
    "resnet50": (2048, "IMAGENET1K_V2"),
    "resnet101": (2048, "IMAGENET1K_V2"),
    "resnet152": (2048, "IMAGENET1K_V2"),
}
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


def _arch(entry):
    if entry.plugin != PLUGIN:
        return None
    if entry.upstream not in ARCHS:
        raise ZooAdaptError(f"plugin resnet serves {', '.join(ARCHS)}, not {entry.upstream!r}")
    return ARCHS[entry.upstream]


def _tag(entry) -> str:
    tag = entry.weights or ARCHS[entry.upstream][1]
    return ARCHS[entry.upstream][1] if tag == "DEFAULT" else tag


@hookimpl
def build_backbone(entry, pretrained):
    if _arch(entry):
        return _torchvision.build(entry, pretrained, _tag(entry))


@hookimpl
def backbone_head(entry):
    arch = _arch(entry)
    if arch:
        return Head("fc", arch[0])


@hookimpl
def backbone_groups(entry):
    if _arch(entry):
        return [LayerGroup("stem", ("conv1", "bn1"))] + [
            LayerGroup(f"layer{i}", (f"layer{i}",)) for i in range(1, 5)] + [
            LayerGroup("head", ("fc",))]


@hookimpl
def backbone_normalization(entry):
    if _arch(entry):
        resize = RESIZE.get(_tag(entry), 256)
        return Normalization(**IMAGENET, input_size=(3, 224, 224), interpolation="bilinear",
                             crop_pct=224 / resize)


@hookimpl
def backbone_source(entry):
    if _arch(entry):
        return _torchvision.source(entry, _tag(entry), WEIGHT_FILES)
