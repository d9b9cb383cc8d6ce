"""zoo-adapt: adapt pretrained vision backbones from model zoos to your own images.

Importing this package is cheap (no torch); the torch-backed API below is imported
on first use."""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.zoo.hookspecs import hookimpl, override

try:
    __version__ = version("zoo-adapt")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

# public name -> module that defines it
_LAZY = {
    # describing and building backbones
    "describe": "zoo.answers",
    "Backbone": "zoo.backbone",
    "Entry": "zoo.backbone",
    "Head": "zoo.backbone",
    "LayerGroup": "zoo.backbone",
    "Normalization": "zoo.backbone",
    "Source": "zoo.backbone",
    "add_registry": "zoo.registry",
    "resolve": "zoo.registry",
    "entries": "zoo.registry",
    "register_plugin": "zoo.plugins",
    "unregister_plugin": "zoo.plugins",
    "create_model": "model.build",
    "swap_head": "model.build",
    "backbone_of": "zoo.backbone",
    "group_parameters": "model.layers",
    "freeze": "model.layers",
    "freeze_to": "model.layers",
    "unfreeze": "model.layers",
    "trainable_groups": "model.layers",
    "layer_lrs": "model.recipes",
    "param_groups": "model.optim",
    # running a job
    "FinetuneConfig": "job.config",
    "finetune": "job.finetune",
    "lr_find": "job.finetune",
    "FinetuneResult": "job.finetune",
    "rank": "job.rank",
    "Ranking": "job.rank",
    "finetune_best": "job.shortlist",
    "Loop": "engine.loop",
    "Callback": "engine.callbacks",
    # using and shipping a model
    "load_plain": "ship.export",
    "load_model": "ship.export",
    "read_card": "ship.export",
    "export_model": "ship.export",
    "evaluate_folder": "ship.inference",
    "predict_paths": "ship.inference",
    "eval_transform": "data.transforms",
}

__all__ = ["ZooAdaptError", "hookimpl", "override", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"zoo_adapt.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'zoo_adapt' has no attribute {name!r}")
