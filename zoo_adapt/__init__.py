"""zoo-adapt: adapt pretrained vision backbones from model zoos to your own images.

Importing this package is cheap (no torch); the torch-backed API below is imported
on first use."""
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from .errors import ZooAdaptError
from .hookspecs import hookimpl, override

try:
    __version__ = version("zoo-adapt")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

# public name -> module that defines it
_LAZY = {
    "describe": "answers", "Backbone": "backbone", "Entry": "backbone", "Head": "backbone",
    "LayerGroup": "backbone", "Normalization": "backbone", "Source": "backbone",
    "add_registry": "registry", "resolve": "registry", "entries": "registry",
    "register_plugin": "plugins", "unregister_plugin": "plugins",
    "create_model": "models", "swap_head": "models", "backbone_of": "models",
    "group_parameters": "layers", "freeze": "layers", "freeze_to": "layers",
    "unfreeze": "layers", "trainable_groups": "layers",
    "layer_lrs": "optim", "param_groups": "optim",
    "load_plain": "export", "eval_transform": "transforms",
}

__all__ = ["ZooAdaptError", "hookimpl", "override", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'zoo_adapt' has no attribute {name!r}")
