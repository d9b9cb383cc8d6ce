"""What a backbone is, as plain data: no torch and no plugin machinery here, so plugins
and `zoo-adapt list` import it cheaply.

A plugin answers questions about a registry entry (its head, layer groups,
normalization, where its weights come from); :func:`zoo_adapt.describe`
(in answers.py) collects the answers into a :class:`Backbone`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from zoo_adapt.errors import ZooAdaptError


@dataclass(frozen=True)
class Entry:
    """A name users type, mapped to the plugin that serves it (one table of registry.toml)."""

    name: str
    plugin: str
    upstream: str
    weights: str | None = None
    description: str = ""
    # Everything else the table holds: static facts (head, in_features, num_groups,
    # input_size, mean, std, interpolation, crop_pct) or options a plugin reads.
    extra: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # the registry file or plugin that named it
    # What a user registry file did, for `zoo-adapt list` to say so: "re-points resnet50
    # (was resnet/resnet50, registry.toml)" or "renames resnet50"; "" otherwise.
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "plugin": self.plugin,
            "upstream": self.upstream,
            "weights": self.weights,
            "description": self.description,
        }
        d.update(self.extra)
        return d


@dataclass(frozen=True)
class Head:
    """The classifier to replace: its attribute path in the model and its input width."""

    attr: str
    in_features: int | None = None


@dataclass(frozen=True)
class LayerGroup:
    """A slice of the model, stem to head. A parameter belongs to the group with a prefix
    equal to its name or to a dotted ancestor of it (`layer1` holds `layer1.0.conv1.weight`).
    `prefixes`: a tuple (or list) of module paths; a single string is one prefix
    (`LayerGroup("head", "fc")`), not its characters."""

    name: str
    prefixes: tuple[str, ...]

    def __post_init__(self) -> None:
        prefixes = (self.prefixes,) if isinstance(self.prefixes, str) else tuple(self.prefixes)
        object.__setattr__(self, "prefixes", prefixes)

    def owns(self, param_name: str) -> bool:
        return any(param_name == p or param_name.startswith(p + ".") for p in self.prefixes)


@dataclass(frozen=True)
class CamTarget:
    """Where class activation maps are computed: `layer`, a module path in the model;
    `prefix_tokens`: None for a CNN's (N, C, H, W) feature map, else the number of
    leading tokens (class, registers) of a (N, tokens, C) output to drop before the rest
    are laid out on their square grid."""

    layer: str
    prefix_tokens: int | None = None


@dataclass(frozen=True)
class Normalization:
    """How images must be prepared for the backbone (timm's pretrained_cfg fields)."""

    mean: tuple[float, ...]  # one value per input channel (three for RGB, one for --in-chans 1)
    std: tuple[float, ...]
    input_size: tuple[int, int, int] = (3, 224, 224)  # (channels, height, width), as timm's
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    @property
    def image_size(self) -> int:
        return self.input_size[-1]

    @property
    def channels(self) -> int:
        return self.input_size[0]

    def with_channels(self, channels: int) -> Normalization:
        """The preprocessing for `channels` input channels: one channel (grayscale, as
        --in-chans 1 reads images) takes the mean of the three channels' mean and std,
        which is what a grey pixel's RGB copy would be normalized with on average."""
        if channels == self.channels:
            return self
        if channels != 1 or len(self.mean) != 3:
            raise ValueError(f"no {channels}-channel normalization from {self.channels} channels")
        return dataclasses.replace(
            self,
            mean=(sum(self.mean) / 3,),
            std=(sum(self.std) / 3,),
            input_size=(1, *self.input_size[1:]),
        )

    def at(self, image_size: int, crop_pct: float | None = None) -> Normalization:
        """The same preprocessing at another input size (and evaluation crop)."""
        return dataclasses.replace(
            self,
            input_size=(self.input_size[0], image_size, image_size),
            crop_pct=self.crop_pct if crop_pct is None else crop_pct,
        )

    def resize_size(self, image_size: int | None = None) -> int:
        """Shorter side before the centre crop, as timm computes it."""
        return math.floor((image_size or self.image_size) / self.crop_pct + 1e-6)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        return cls(
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            input_size=tuple(d.get("input_size", (3, 224, 224))),
            interpolation=d.get("interpolation", "bilinear"),
            crop_pct=float(d.get("crop_pct", 0.875)),
        )


IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
INCEPTION = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@dataclass(frozen=True)
class Source:
    """Where the architecture and its default weights come from, and whether those
    weights can be had offline right now: 'bundled', 'cached', 'download' or 'missing'."""

    library: str
    weights: str | None = None
    status: str = "download"
    location: str | None = None


@dataclass(frozen=True)
class Backbone:
    """Everything the engine knows about one backbone. `groups` is None when the
    description was made without building the model and the plugin needs one to say."""

    entry: Entry
    head: Head | None
    normalization: Normalization | None
    source: Source
    groups: tuple[LayerGroup, ...] | None
    num_groups: int | None
    answered_by: dict[str, str] = field(default_factory=dict)
    # What create_model started the weights from: the zoo's tag ("default" when the
    # entry names none), a weights file, or None for random initialisation.
    initial_weights: str | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    # A built model's description always has a head, normalization and groups (create_model
    # refuses a plugin that leaves one out); these say so to the type checker.
    @property
    def built_head(self) -> Head:
        return _described(self.head, self.name, "head")

    @property
    def built_normalization(self) -> Normalization:
        return _described(self.normalization, self.name, "normalization")

    @property
    def built_groups(self) -> tuple[LayerGroup, ...]:
        return _described(self.groups, self.name, "layer groups")


T = TypeVar("T")


def _described(value: T | None, name: str, what: str) -> T:
    if value is None:
        raise ZooAdaptError(f"backbone {name!r} was described without building it: its {what} is unknown")
    return value


def backbone_of(model: Any) -> Backbone:
    """The description create_model attached to `model` (as ``model.zoo_adapt``)."""
    card = getattr(model, "zoo_adapt", None)
    if not isinstance(card, Backbone):
        raise ZooAdaptError(
            "this model was not made by zoo_adapt.create_model, so its head and layer groups are unknown"
        )
    return card
