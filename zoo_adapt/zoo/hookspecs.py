"""Every hook a zoo-adapt plugin can implement.

Backbone hooks (those taking `entry`) are routed: zoo-adapt asks only the plugin that
serves the entry (``entry.plugin``), so a plugin never checks whether an entry is its
own. Another plugin answers instead only where it says so with :func:`override`, for
the backbones it names. Plugins whose implementations of a hook are all wrappers
(``@hookimpl(wrapper=True)``) see every call of it.

Required for a plugin that serves backbones: build_backbone, backbone_head,
backbone_groups, backbone_normalization. Optional: register_backbones, backbone_source,
convert_state_dict, backbone_cam_target; register_adaptation_methods for methods;
register_trackers for experiment trackers; register_transferability_scores for scores
`zoo-adapt rank` computes.

Hooks taking `model` are asked twice: with `model=None` when zoo-adapt must answer
without building anything (`zoo-adapt list`, which never imports torch), and with the
built module otherwise. With `model=None`, answer from static knowledge or return None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pluggy

hookspec = pluggy.HookspecMarker("zoo_adapt")
hookimpl = pluggy.HookimplMarker("zoo_adapt")
OVERRIDES_ATTR = "zoo_adapt_overrides"
F = TypeVar("F", bound=Callable)


def override(*backbones: str) -> Callable[[F], F]:
    """Mark a backbone hook implementation as answering for `backbones` (names users
    type), which another plugin serves. It is then asked instead of that plugin, for
    these names only; `zoo-adapt info NAME` shows it under "answered by"."""
    if not backbones or not all(isinstance(b, str) and b for b in backbones):
        raise TypeError("override() takes the backbone names it answers for, e.g. override('resnet50')")

    def mark(function: F) -> F:
        setattr(function, OVERRIDES_ATTR, frozenset(backbones))
        return hookimpl(function)

    return mark


@hookspec
def register_backbones(register):
    """Name backbones in code, as registry.toml does in a file (optional).

    Call ``register(name, upstream, weights=None, description="", **extra)``; the
    entry is served by the calling plugin. A name that zoo-adapt or another plugin
    already uses is a collision, reported with both sides, unless you pass
    ``override=True``. Must not import torch."""


@hookspec(firstresult=True)
def build_backbone(entry, pretrained):
    """Build the plain upstream ``nn.Module`` for `entry`, with its original head (required).

    `pretrained`: load the zoo's weights named by ``entry.weights`` (a tag such as
    torchvision's ``IMAGENET1K_V2`` or a timm pretrained tag; None for the zoo's
    default). When False, return a randomly initialised model; zoo-adapt loads any
    local weights file itself. Raise :class:`zoo_adapt.ZooAdaptError` when the weights
    cannot be had (no network, say), naming the offline options. ``entry.extra`` may
    ask for ``drop_path_rate`` (--drop-path) and ``in_chans`` 1 (--in-chans 1): build
    a one-channel model if you can (timm's ``in_chans=1``); else the engine sums the
    RGB kernels of the model's first 3-channel ``nn.Conv2d``."""


@hookspec(firstresult=True)
def backbone_head(entry, model):
    """Return a :class:`~zoo_adapt.plugin_api.Head` (required): the attribute path of
    the classifier that zoo-adapt replaces with an N-class ``nn.Linear``, and its
    in-features."""


@hookspec(firstresult=True)
def backbone_groups(entry, model):
    """Return the layer groups, stem to head, as a list of
    :class:`~zoo_adapt.plugin_api.LayerGroup` (required). Together they must hold every
    parameter exactly once, and the last group must be the head. Used for freezing and
    for per-group learning rates."""


@hookspec(firstresult=True)
def backbone_normalization(entry, model):
    """Return a :class:`~zoo_adapt.plugin_api.Normalization` (required): mean, std,
    input size, interpolation and crop fraction the pretrained weights expect."""


@hookspec(firstresult=True)
def backbone_source(entry):
    """Return a :class:`~zoo_adapt.plugin_api.Source` (optional): the library of the
    architecture, the default weights and whether they are available offline now.
    Must not import torch."""


@hookspec(firstresult=True)
def convert_state_dict(entry, state_dict, model):
    """Rename a foreign checkpoint's tensors to the model's own names, or return None
    (optional).

    Called when a weights file's keys do not match `model` (for example weights
    published for another implementation of the same architecture)."""


@hookspec
def register_adaptation_methods(register):
    """Offer domain-adaptation methods for ``zoo-adapt finetune --target-data`` (optional).

    Call ``register(name, factory, description="")``. ``factory(in_features,
    num_classes, config)`` returns a :class:`~zoo_adapt.plugin_api.AdaptationMethod`:
    an ``nn.Module`` holding the method's extra modules, whose ``loss(...)`` gives the
    per-step loss from source and target features and logits, and the figures to log.
    A name another plugin uses is a collision unless you pass ``override=True``.
    Must not import torch at import time: import it inside the factory."""


@hookspec(firstresult=True)
def backbone_cam_target(entry, model):
    """Return a :class:`~zoo_adapt.plugin_api.CamTarget` (optional): the layer whose
    activations class activation maps (Grad-CAM) are computed on, and, for token
    models (ViTs), how many prefix tokens (class, register) to drop before the tokens
    are laid out on the patch grid. Without an answer zoo-adapt takes the last layer
    whose output is a spatial feature map (N, C, H, W), which suits CNNs."""


@hookspec
def register_trackers(register):
    """Offer experiment trackers for ``zoo-adapt finetune --log NAME`` (optional).

    Call ``register(name, factory, description="", requires=(), install=None)``.
    ``factory()`` returns a :class:`~zoo_adapt.plugin_api.Tracker`; ``requires`` names
    the modules it imports (checked before a run starts, without importing them), and
    ``install`` says how to get them (default: ``pip install`` the required names). A
    name another plugin uses is a collision unless you pass ``override=True``. Must not
    import the tracker's package at import time: import it inside the tracker."""


@hookspec
def register_transferability_scores(register):
    """Add a transferability score to ``zoo-adapt rank`` (optional).

    Call ``register(name, function, description="", needs_validation=False)``.
    ``function(train_features, train_labels, val_features, val_labels)`` gets one
    backbone's cached features as numpy arrays (float32 N x D; int64 class indices;
    the validation pair None when there are no validation images, in which case a
    score registered with ``needs_validation=True`` is skipped) and returns a number,
    higher meaning a better fit (it is not asked on multi-label data). It becomes a column of the leaderboard and of
    rank.json's rows; the recommendation rule does not read it. The name must be an
    identifier and not a built-in column (logme, probe_accuracy, knn_accuracy); a name
    another plugin uses is a collision unless you pass ``override=True``. Must not
    import torch at import time."""


BACKBONE_HOOKS = (
    "build_backbone",
    "backbone_head",
    "backbone_groups",
    "backbone_normalization",
    "backbone_source",
    "convert_state_dict",
    "backbone_cam_target",
)
