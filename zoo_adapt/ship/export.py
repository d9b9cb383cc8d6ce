"""model.safetensors: the fine-tuned state dict under the upstream architecture's own
names (it loads with strict=True into the plain torchvision/timm model built with N
classes), with what is needed to use it in the header: classes, normalization, input
size, backbone."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from zoo_adapt import __version__
from zoo_adapt.data.transforms import eval_transform
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.files import write_bytes
from zoo_adapt.model.build import adapt_input_channels, create_model, load_state_dict_into, num_classes_of
from zoo_adapt.model.weights import read_state_dict, safetensors_header
from zoo_adapt.zoo.backbone import Entry, Normalization, backbone_of

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
    vflip: bool = False  # trained with vertical flips (--vflip): TTA flips vertically too
    rot90: bool = False  # trained with 90-degree rotations (--rot90): TTA rotates too
    multi_label: bool = False  # a sigmoid per class: every class above its threshold applies
    thresholds: list[float] | None = None  # multi-label: per class, chosen on validation (else 0.5)
    temperature: float = 1.0  # the logits are divided by it before the softmax (calibration; 1: none)

    @property
    def image_size(self) -> int:
        return self.normalization.image_size


def export_model(
    model: nn.Module,
    path: str | Path,
    classes: list[str],
    normalization: Normalization | None = None,
    extra: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model` (made by create_model) with its metadata, atomically; `state`:
    weights to write instead of the model's own (a kept earlier epoch); `normalization`:
    the preprocessing the model was fine-tuned for (size and eval crop included), if not
    the backbone's."""
    backbone = backbone_of(model)
    if num_classes_of(model) != len(classes):
        raise ZooAdaptError(f"{len(classes)} class names for a model with {num_classes_of(model)} outputs")
    norm = normalization or backbone.built_normalization
    meta = {
        "format": FORMAT,
        "zoo_adapt_version": __version__,
        "backbone": backbone.name,
        "plugin": backbone.entry.plugin,
        "upstream": backbone.entry.upstream,
        "library": backbone.source.library,
        "pretrained_weights": str(backbone.initial_weights),
        "entry": json.dumps(backbone.entry.to_dict()),
        "head": backbone.built_head.attr,
        "num_classes": str(len(classes)),
        "classes": json.dumps(list(classes)),
        "mean": json.dumps(list(norm.mean)),
        "std": json.dumps(list(norm.std)),
        "input_size": json.dumps(list(norm.input_size)),
        "interpolation": norm.interpolation,
        "crop_pct": str(norm.crop_pct),
    }
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    state = model.state_dict() if state is None else state
    write_safetensors({k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}, path, meta)
    return Path(path)


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> str:
    """Write a safetensors file atomically and with the permissions the umask gives any
    other file (safetensors' own save_file writes a hidden 0600 temporary, left behind
    when killed, and renames it, so the model came out 0600 beside 0644 outputs). Holds
    the serialized file in memory once. Returns its SHA-256."""
    data = save(tensors, metadata=metadata)
    write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def read_card(path: str | Path) -> tuple[ModelCard, dict[str, str]]:
    """The card of an exported model, every header field checked before it is used: a
    damaged or crafted header is a one-line error naming the file and the field."""
    path = Path(path)
    if not path.exists():
        raise ZooAdaptError(f"model file not found: {path}")
    if not path.is_file():
        raise ZooAdaptError(f"model file {path} is not a regular file")
    meta, shapes = safetensors_header(path)
    if meta.get("format") != FORMAT:
        raise ZooAdaptError(
            f"{path} is not a zoo-adapt export (no zoo-adapt metadata in its header); "
            "to start from plain weights use --weights with finetune"
        )
    field = _Fields(path, meta)
    classes = field(
        "classes",
        "a JSON list of distinct class names",
        lambda v: isinstance(v, list) and v and all(isinstance(c, str) and c for c in v) and len(set(v)) == len(v),
    )
    head = field("head", "the head's module name", _name, parse=str)
    outputs = (shapes.get(f"{head}.weight") or [len(classes)])[0]
    if outputs != len(classes):
        raise ZooAdaptError(
            f"model file {path}: its header lists {len(classes)} classes but its head ({head}) has {outputs} outputs"
        )
    field("num_classes", f"{len(classes)}, the number of classes", lambda v: v == len(classes), default=None)
    entry_d = field(
        "entry",
        "a JSON object naming the backbone's plugin and upstream model",
        lambda v: (
            isinstance(v, dict)
            and all(_name(v.get(k)) for k in ("name", "plugin", "upstream"))
            and isinstance(v.get("weights"), (str, type(None)))
            and isinstance(v.get("description", ""), str)
        ),
    )
    entry = Entry(
        name=entry_d.pop("name"),
        plugin=entry_d.pop("plugin"),
        upstream=entry_d.pop("upstream"),
        weights=entry_d.pop("weights", None),
        description=entry_d.pop("description", ""),
        extra=entry_d,
        origin=str(path),
    )
    input_size = tuple(field("input_size", f"[3, N, N] or [1, N, N] with N from 1 to {MAX_INPUT_SIDE}", _input_size))
    chans = input_size[0]  # 1: a grayscale model (--in-chans 1)
    numbers, positive = (
        ("three numbers", "three positive numbers")
        if chans == 3
        else ("one number (input_size: one channel)", "one positive number (input_size: one channel)")
    )
    norm = Normalization(
        mean=tuple(field("mean", f"a JSON list of {numbers}", lambda v: _numbers(v, chans))),
        std=tuple(field("std", f"a JSON list of {positive}", lambda v: _numbers(v, chans) and min(v) > 0)),
        input_size=input_size,
        interpolation=field("interpolation", " or ".join(INTERPOLATIONS), lambda v: v in INTERPOLATIONS, parse=str),
        crop_pct=field("crop_pct", "a number in (0, 1]", lambda v: _numbers([v], 1) and 0 < v <= 1, parse=float),
    )
    card = ModelCard(
        field("backbone", "a backbone name", _name, parse=str),
        entry,
        field("library", "a library name", _name, parse=str),
        classes,
        norm,
        head,
        hflip=field("hflip", "true or false", lambda v: isinstance(v, bool), default=True),
        vflip=field("vflip", "true or false", lambda v: isinstance(v, bool), default=False),
        rot90=field("rot90", "true or false", lambda v: isinstance(v, bool), default=False),
        multi_label=field("multi_label", "true or false", lambda v: isinstance(v, bool), default=False),
        temperature=field(
            "temperature",
            "a positive finite number",
            lambda v: _numbers([v], 1) and v > 0,
            default=1.0,
        ),
    )
    if card.multi_label:
        card.thresholds = field(
            "thresholds",
            f"a JSON list of {len(classes)} numbers in [0, 1]",
            lambda v: _numbers(v, len(classes)) and all(0 <= x <= 1 for x in v),
            default=[0.5] * len(classes),
        )
    return card, meta


MAX_INPUT_SIDE = 4096
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # those transforms.py applies
_MISSING = object()


class _Fields:
    """Reads header fields: parse, check, or a one-line error naming file and field."""

    def __init__(self, path: Path, meta: dict[str, str]):
        self.path, self.meta = path, meta

    def __call__(self, key: str, want: str, check, parse=json.loads, default=_MISSING):
        if key not in self.meta:
            if default is not _MISSING:
                return default
            raise ZooAdaptError(f"model file {self.path}: its header has no '{key}' (damaged zoo-adapt metadata)")
        raw = self.meta[key]
        try:
            value = parse(raw)
            ok = bool(check(value))
        except (ValueError, TypeError, AttributeError):
            ok = False
        if not ok:
            shown = raw if len(raw) <= 40 else raw[:37] + "..."
            raise ZooAdaptError(f"model file {self.path}: header field '{key}' must be {want}, not {shown!r}")
        return value


def _name(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _numbers(v, n: int) -> bool:
    return (
        isinstance(v, list)
        and len(v) == n
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    )


def _input_size(v) -> bool:
    return (
        isinstance(v, list)
        and len(v) == 3
        and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        and v[0] in (1, 3)
        and v[1] == v[2]
        and 1 <= v[1] <= MAX_INPUT_SIDE
    )


def rewrite_header(source: str | Path, target: str | Path, extra: dict[str, Any]) -> Path:
    """`source`'s weights written to `target` with header fields added or replaced
    (`extra`, values JSON-encoded unless text), checked by read_card afterwards."""
    _, meta = read_card(source)
    meta = {**meta, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()}}
    write_safetensors(read_state_dict(source), target, meta)
    read_card(target)
    return Path(target)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild an exported model (no download) and load its weights strictly."""
    card, _ = read_card(path)
    model = create_model(card.entry, num_classes=len(card.classes), pretrained=False)
    load_state_dict_into(model, read_state_dict(path), f"model file {path}")
    return model.to(device).eval(), card


def load_plain(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """`(model, preprocess)` for using an export without zoo-adapt's training machinery:
    the plain upstream module built by its own library (timm or torchvision; a third
    party's backbone through its plugin; a one-channel export, --in-chans 1, built with
    timm's ``in_chans=1`` or, torchvision's, with its first convolution taking one
    channel), in eval mode, and the exact evaluation
    preprocessing stored in the file (resize, centre crop, mean and std: PIL image in,
    normalized tensor out), so predictions match `zoo-adapt predict`:

        model, preprocess = load_plain("runs/mine/model.safetensors")
        temperature = read_card("runs/mine/model.safetensors")[0].temperature
        probs = (model(preprocess(image)[None]) / temperature).softmax(-1)

    The module is the plain one, so its logits are the uncalibrated ones: divide them by
    the card's `temperature` (fitted on validation images; 1.0 when the run did not
    calibrate) for the probabilities `zoo-adapt predict` gives. A multi-label export
    (`read_card(path)[0].multi_label`) takes `.sigmoid()` instead of the softmax; its
    labels are the classes at or above `read_card(path)[0].thresholds`.
    """
    card, _ = read_card(path)
    state = read_state_dict(path)
    n, chans = len(card.classes), card.normalization.channels
    if card.library == "timm":
        import timm

        try:  # ViTs fine-tuned at another size need their position embeddings interpolated
            model = timm.create_model(card.entry.upstream, num_classes=n, in_chans=chans, dynamic_img_size=True)
        except TypeError:
            model = timm.create_model(card.entry.upstream, num_classes=n, in_chans=chans)
    elif card.library == "torchvision":
        import torchvision

        model = torchvision.models.get_model(card.entry.upstream, num_classes=n)
        if chans != 3:  # torchvision has no in_chans: its stem made one-channel, as training made it
            adapt_input_channels(model, chans, card.entry.upstream)
    else:
        model, _ = load_model(path)
        return model.to(device), eval_transform(card.normalization)
    load_state_dict_into(model, state, f"model file {path}")
    return model.to(device).eval(), eval_transform(card.normalization)
