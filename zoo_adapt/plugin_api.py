"""Everything a zoo-adapt plugin imports, in one place; zoo-adapt's own plugins use
exactly this. Importing it is cheap (no torch: `zoo-adapt list` imports every plugin);
the torch-backed names (AdaptationMethod, GradientReversal, grad_reverse) load on
first use, and only their module, never the training loop.

A plugin's name is its entry-point name (or the name given to register_plugin); it is
asked only about the backbones it serves, so it never checks `entry.plugin`."""

from importlib import import_module

from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.zoo.backbone import IMAGENET, INCEPTION, CamTarget, Entry, Head, LayerGroup, Normalization, Source
from zoo_adapt.zoo.hookspecs import hookimpl, override
from zoo_adapt.zoo.hub import download_failed, hf_hub_cached, reachable, torch_hub_checkpoint
from zoo_adapt.zoo.options import Option, option
from zoo_adapt.zoo.tracker_api import Tracker, TrackerRun

# torch-backed names, loaded on first use from their module
_TORCH = {
    "AdaptationMethod": "zoo_adapt.adapt.method",
    "GradientReversal": "zoo_adapt.adapt.method",
    "grad_reverse": "zoo_adapt.adapt.method",
    "load_plain": "zoo_adapt.ship.export",  # for trackers that log the model in their own format
    "read_card": "zoo_adapt.ship.export",
}

__all__ = [
    "hookimpl",
    "override",
    "Entry",
    "Head",
    "LayerGroup",
    "Normalization",
    "Source",
    "CamTarget",
    "Tracker",
    "TrackerRun",
    "IMAGENET",
    "INCEPTION",
    "ZooAdaptError",
    "download_failed",
    "torch_hub_checkpoint",
    "hf_hub_cached",
    "reachable",
    "option",
    "Option",
    *sorted(_TORCH),
]


def __getattr__(name: str):
    if name in _TORCH:
        return getattr(import_module(_TORCH[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
