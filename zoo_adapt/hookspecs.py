"""Every hook a zoo-adapt plugin can implement. Backbone questions are `firstresult`:
plugins are asked in pluggy's order (tryfirst first, later-registered before earlier)
and the first answer that is not None wins, so a plugin overrides another's answer
for one model by answering for it with `@hookimpl(tryfirst=True)`.

Hooks taking `model` are asked twice: with `model=None` when zoo-adapt must answer
without building anything (`zoo-adapt list`, which never imports torch), and with the
built module otherwise. Answer None for entries that are not yours.
"""
import pluggy

hookspec = pluggy.HookspecMarker("zoo_adapt")
hookimpl = pluggy.HookimplMarker("zoo_adapt")


@hookspec
def register_backbones(register):
    """Name backbones in code, as registry.toml does in a file.

    Call ``register(name, upstream, weights=None, description="", **extra)``; the
    entry is served by the calling plugin. Must not import torch."""


@hookspec(firstresult=True)
def build_backbone(entry, pretrained):
    """Build the plain upstream ``nn.Module`` for `entry`, with its original head.

    `pretrained`: load the zoo's weights named by ``entry.weights`` (a tag such as
    torchvision's ``IMAGENET1K_V2`` or a timm pretrained tag; None for the zoo's
    default). When False, return a randomly initialised model; zoo-adapt loads any
    local weights file itself. Raise :class:`zoo_adapt.ZooAdaptError` when the weights
    cannot be had (no network, say), naming the offline options."""


@hookspec(firstresult=True)
def backbone_head(entry, model):
    """Return a :class:`zoo_adapt.backbone.Head`: the attribute path of the classifier
    that zoo-adapt replaces with an N-class ``nn.Linear``, and its in-features."""


@hookspec(firstresult=True)
def backbone_groups(entry, model):
    """Return the layer groups, stem to head, as a list of
    :class:`zoo_adapt.backbone.LayerGroup`. Together they must hold every parameter
    exactly once, and the last group must be the head. Used for freezing and for
    per-group learning rates."""


@hookspec(firstresult=True)
def backbone_normalization(entry, model):
    """Return a :class:`zoo_adapt.backbone.Normalization`: mean, std, input size,
    interpolation and crop fraction the pretrained weights expect."""


@hookspec(firstresult=True)
def backbone_source(entry):
    """Return a :class:`zoo_adapt.backbone.Source`: the library of the architecture, the
    default weights and whether they are available offline now. Must not import torch."""


@hookspec(firstresult=True)
def convert_state_dict(entry, state_dict, model):
    """Rename a foreign checkpoint's tensors to the model's own names, or return None.

    Called when a weights file's keys do not match `model` (for example weights
    published for another implementation of the same architecture)."""


@hookspec
def register_adaptation_methods(register):
    """Offer domain-adaptation methods for ``zoo-adapt finetune --target-data``.

    Call ``register(name, factory, description="")``. ``factory(in_features,
    num_classes, config)`` returns a :class:`zoo_adapt.adaptation.AdaptationMethod`: an
    ``nn.Module`` holding the method's extra modules, whose ``loss(...)`` gives the
    per-step loss from source and target features and logits, and the figures to log.
    Must not import torch at import time."""
