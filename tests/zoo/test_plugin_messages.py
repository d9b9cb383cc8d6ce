"""What a plugin author reads when an answer is wrong: the head that is not in the model
names the plugin and the backbone, a parameter in two groups names them, a bare string
is one prefix, and a misspelt key in a registry file is pointed out."""

from __future__ import annotations

import warnings

import pytest
from torch import nn

import zoo_adapt
from zoo_adapt import hookimpl
from zoo_adapt.errors import PluginError, ZooAdaptError, ZooAdaptWarning
from zoo_adapt.model.layers import group_parameters
from zoo_adapt.plugin_api import IMAGENET, Head, LayerGroup, Normalization
from zoo_adapt.zoo import registry


class Toy:
    """A small complete plugin; `head` and `groups` are what it answers."""

    def __init__(self, name: str, head: str = "2", groups=None):
        self.name, self.head = name, head
        self.groups = groups or [LayerGroup("body", ("0",)), LayerGroup("head", ("2",))]

    @hookimpl
    def register_backbones(self, register):
        register(self.name, upstream="toy")

    @hookimpl
    def build_backbone(self, entry, pretrained):
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 3))

    @hookimpl
    def backbone_head(self, entry):
        return Head(self.head, 4)

    @hookimpl
    def backbone_groups(self, entry):
        return self.groups

    @hookimpl
    def backbone_normalization(self, entry):
        return Normalization(**IMAGENET, input_size=(3, 8, 8))


def test_a_head_the_model_lacks_names_the_plugin_and_the_backbone(plugin):
    plugin(Toy("headless", head="classifier"), "headless_zoo")
    with pytest.raises(PluginError) as caught:
        zoo_adapt.create_model("headless", pretrained=False)
    message = str(caught.value)
    assert "plugin 'headless_zoo'" in message and "backbone 'headless'" in message
    assert "no submodule 'classifier'" in message and "top-level modules: 0, 1, 2" in message


def test_a_parameter_in_two_groups_names_both(plugin):
    twice = [LayerGroup("body", ("0",)), LayerGroup("all", ("0", "2")), LayerGroup("head", ("2",))]
    plugin(Toy("twicenet", groups=twice), "twice_zoo")
    with pytest.raises(ZooAdaptError, match=r"parameter '0.weight' is in groups 'body' and 'all', not exactly one"):
        zoo_adapt.create_model("twicenet", pretrained=False)


def test_a_bare_string_is_one_prefix(plugin):
    assert LayerGroup("head", "fc").prefixes == ("fc",) and LayerGroup("x", ["a", "b"]).prefixes == ("a", "b")
    plugin(Toy("stringnet", groups=[LayerGroup("body", "0"), LayerGroup("head", "2")]), "string_zoo")
    model = zoo_adapt.create_model("stringnet", pretrained=False, num_classes=2)
    assert [name for name, _ in group_parameters(model)] == ["body", "head"]


def test_a_misspelt_key_in_a_registry_file_is_pointed_out(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        '[mynet]\nplugin = "resnet"\nupstream = "resnet18"\nweigths = "IMAGENET1K_V1"\nparam = 11\n'
        'variant = "plugin-own key"\n'
    )
    registry.add_registry(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ZooAdaptWarning)
            entry = registry.resolve("mynet")
    finally:
        registry._user_files.remove(path)
        registry.reset()
    said = [str(w.message) for w in caught if issubclass(w.category, ZooAdaptWarning)]
    assert any("[mynet] has key 'weigths'" in s and "did you mean 'weights'?" in s for s in said), said
    assert any("[mynet] has key 'param'" in s and "did you mean 'params'?" in s for s in said), said
    assert not any("variant" in s for s in said) and entry.extra["variant"] == "plugin-own key"
