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

_TORCH = {"AdaptationMethod", "GradientReversal", "grad_reverse"}  # from zoo_adapt.adapt.method

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
        return getattr(import_module("zoo_adapt.adapt.method"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
