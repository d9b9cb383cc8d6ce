"""model.safetensors: the fine-tuned state dict under the upstream architecture's own
names (it loads with strict=True into the plain torchvision/timm model built with N
classes), with what is needed to use it in the header: classes, normalization, input
size, backbone."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .backbone import Entry, Normalization
from .errors import ZooAdaptError
from .weights import safetensors_metadata

FORMAT = "zoo-adapt/1"


@dataclass
class ModelCard:
    """The metadata of an exported model."""

    backbone: str
    entry: Entry
    library: str
    classes: list[str]
    normalization: Normalization  # input_size is the size the model was fine-tuned at
    head: str
    hflip: bool = True  # trained with horizontal flips, so TTA may flip too

    @property
    def image_size(self) -> int:
        return self.normalization.image_size


def export_model(model: nn.Module, path: str | Path, classes: list[str], image_size: int | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write `model` (made by create_model) with its metadata; atomically, so an
    interrupted write never leaves a broken file behind."""
    from safetensors.torch import save_file

    from .models import backbone_of, num_classes_of

    backbone = backbone_of(model)
    if num_classes_of(model) != len(classes):
        raise ZooAdaptError(f"{len(classes)} class names for a model with {num_classes_of(model)} outputs")
    norm = backbone.normalization
    size = image_size or norm.image_size
    norm = Normalization(norm.mean, norm.std, (norm.input_size[0], size, size), norm.interpolation,
                         norm.crop_pct)
    meta = {
        "format": FORMAT, "zoo_adapt_version": __version__,
        "backbone": backbone.name, "plugin": backbone.entry.plugin, "upstream": backbone.entry.upstream,
        "library": backbone.source.library, "pretrained_weights": str(backbone.initial_weights),
        "entry": json.dumps(backbone.entry.to_dict()), "head": backbone.head.attr,
        "num_classes": str(len(classes)), "classes": json.dumps(list(classes)),
        "mean": json.dumps(list(norm.mean)), "std": json.dumps(list(norm.std)),
        "input_size": json.dumps(list(norm.input_size)), "interpolation": norm.interpolation,
        "crop_pct": str(norm.crop_pct),
    }
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_card(path: str | Path) -> tuple[ModelCard, dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise ZooAdaptError(f"model file not found: {path}")
    meta = safetensors_metadata(path)
    if meta.get("format") != FORMAT:
        raise ZooAdaptError(f"{path} is not a zoo-adapt export (no zoo-adapt metadata in its header); "
                            "to start from plain weights use --weights with finetune")
    try:
        entry_d = json.loads(meta["entry"])
        entry = Entry(name=entry_d.pop("name"), plugin=entry_d.pop("plugin"),
                      upstream=entry_d.pop("upstream"), weights=entry_d.pop("weights", None),
                      description=entry_d.pop("description", ""), extra=entry_d, origin=str(path))
        norm = Normalization(mean=tuple(json.loads(meta["mean"])), std=tuple(json.loads(meta["std"])),
                             input_size=tuple(json.loads(meta["input_size"])),
                             interpolation=meta["interpolation"], crop_pct=float(meta["crop_pct"]))
        card = ModelCard(meta["backbone"], entry, meta["library"], json.loads(meta["classes"]), norm,
                         meta["head"], hflip=json.loads(meta.get("hflip", "true")))
    except (KeyError, ValueError) as e:
        raise ZooAdaptError(f"{path}: damaged zoo-adapt metadata ({e})") from None
    return card, meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild an exported model (no download) and load its weights strictly."""
    from .models import create_model, load_state_dict_into
    from .weights import read_state_dict

    card, _ = read_card(path)
    model = create_model(card.entry, num_classes=len(card.classes), pretrained=False)
    load_state_dict_into(model, read_state_dict(path), f"model file {path}")
    return model.to(device).eval(), card
