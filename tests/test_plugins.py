"""Third-party plugins: registered in-process or installed through the entry point,
overriding a built-in answer, and bad hook implementations rejected loudly."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo_adapt
from zoo_adapt import ZooAdaptError, hookimpl
from zoo_adapt.backbone import (
    IMAGENET,
    Head,
    LayerGroup,
    Normalization,
    Source,
    describe,
)
from zoo_adapt.plugins import installed_plugins
from zoo_adapt.registry import tomllib

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


class TinyNet(nn.Module):
    """Stands in for a third party's upstream architecture."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)))


class ToyZoo:
    """A complete plugin serving one backbone, `tinynet`."""

    @hookimpl
    def register_backbones(self, register):
        register("tinynet", upstream="TinyNet", description="a test network")

    @hookimpl
    def build_backbone(self, entry, pretrained):
        if entry.plugin == "toyzoo":
            return TinyNet()

    @hookimpl
    def backbone_head(self, entry):
        if entry.plugin == "toyzoo":
            return Head("fc", 16)

    @hookimpl
    def backbone_groups(self, entry):
        if entry.plugin == "toyzoo":
            return [LayerGroup("stem", ("stem",)), LayerGroup("body", ("body",)),
                    LayerGroup("head", ("fc",))]

    @hookimpl
    def backbone_normalization(self, entry):
        if entry.plugin == "toyzoo":
            return Normalization(**IMAGENET, input_size=(3, 32, 32))

    @hookimpl
    def backbone_source(self, entry):
        if entry.plugin == "toyzoo":
            return Source("toy", None, "bundled")


def test_third_party_plugin_builds_and_shows_in_list(plugin, run_cli):
    plugin(ToyZoo(), "toyzoo")
    model = zoo_adapt.create_model("tinynet", num_classes=4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert [g for g, _ in zoo_adapt.group_parameters(model)] == ["stem", "body", "head"]
    listed = {c["name"]: c for c in json.loads(run_cli("list", "--json").output)}
    assert listed["tinynet"]["plugin"] == "toyzoo"
    assert listed["tinynet"]["num_groups"] == 3 and listed["tinynet"]["head"] == "fc"
    assert "toyzoo" in {p["name"] for p in json.loads(run_cli("plugins", "--json").output)}
    zoo_adapt.unregister_plugin("toyzoo")
    assert "tinynet" not in json.loads(run_cli("list", "--json").output)


class CoarseResnet:
    """Overrides one answer of the built-in resnet plugin for one model."""

    @hookimpl(tryfirst=True)
    def backbone_groups(self, entry):
        if entry.name == "resnet18":
            return [LayerGroup("body", ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")),
                    LayerGroup("head", ("fc",))]


def test_a_plugin_overrides_a_builtin_answer_for_one_model(plugin):
    assert describe("resnet18").num_groups == 6
    plugin(CoarseResnet(), "coarse")
    model = zoo_adapt.create_model("resnet18", num_classes=3, pretrained=False)
    assert [g for g, _ in zoo_adapt.group_parameters(model)] == ["body", "head"]
    assert model.zoo_adapt.answered_by["backbone_groups"] == "coarse"
    assert model.zoo_adapt.answered_by["backbone_head"] == "resnet"
    assert describe("resnet34").num_groups == 6  # other models untouched
    zoo_adapt.unregister_plugin("coarse")
    assert describe("resnet18").num_groups == 6


class Misspelt:
    @hookimpl
    def backbone_haed(self, entry):
        return None


class WrongArgument:
    @hookimpl
    def backbone_head(self, entry, modle):
        return None


class WrongAnswer:
    @hookimpl(tryfirst=True)
    def backbone_head(self, entry):
        if entry.name == "resnet18":
            return "fc"


class GroupsMissParameters:
    @hookimpl(tryfirst=True)
    def backbone_groups(self, entry):
        if entry.name == "resnet18":
            return [LayerGroup("stem", ("conv1", "bn1")), LayerGroup("head", ("fc",))]


def test_misspelt_hook_is_rejected_with_plugin_name():
    with pytest.raises(ZooAdaptError, match=r"plugin 'typo'.*'backbone_haed'.*did you mean 'backbone_head'"):
        zoo_adapt.register_plugin(Misspelt(), "typo")
    assert "typo" not in {p.name for p in installed_plugins()}


def test_unknown_hook_argument_is_rejected_with_plugin_name():
    with pytest.raises(ZooAdaptError, match=r"plugin 'badargs'.*modle"):
        zoo_adapt.register_plugin(WrongArgument(), "badargs")


def test_malformed_answers_name_the_plugin(plugin):
    plugin(WrongAnswer(), "wronganswer")
    with pytest.raises(ZooAdaptError, match=r"plugin 'wronganswer' answered backbone_head.*str, not Head"):
        describe("resnet18")
    zoo_adapt.unregister_plugin("wronganswer")
    plugin(GroupsMissParameters(), "holes")
    with pytest.raises(ZooAdaptError, match=r"plugin 'holes'.*'layer1\.0\.conv1\.weight' is in no group"):
        zoo_adapt.create_model("resnet18", pretrained=False)


def test_builtins_come_through_the_entry_point_group():
    by_name = {p.name: p for p in installed_plugins()}
    for name in ("resnet", "efficientnet", "vit", "timm", "efficientnet_lite0"):
        assert by_name[name].distribution == "zoo-adapt"
        assert by_name[name].module.startswith("zoo_adapt_plugins.")


def _docs_block(lang: str, first_line: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", DOCS.read_text(), re.S)
    return next(b for b in blocks if b.startswith(first_line))


def test_documented_example_plugin_works_when_installed(tmp_path):
    """The plugin in docs/plugins.md, installed as a distribution with its entry point,
    is found by a fresh `zoo-adapt` process."""
    (tmp_path / "zoo_adapt_mobilenet.py").write_text(_docs_block("python", '"""torchvision'))
    pyproject = tomllib.loads(_docs_block("toml", "[build-system]"))
    (name, module), = pyproject["project"]["entry-points"]["zoo_adapt"].items()
    dist = tmp_path / "zoo_adapt_mobilenet-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-adapt-mobilenet\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[zoo_adapt]\n{name} = {module}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    zoo = [sys.executable, "-c", "from zoo_adapt.cli import main; main()"]

    def run(*args):
        out = subprocess.run(zoo + list(args), env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    plugins = {p["name"]: p for p in run("plugins", "--json")}
    assert plugins["mobilenet"]["distribution"] == "zoo-adapt-mobilenet"
    assert plugins["mobilenet"]["backbones"] == ["mobilenet_v3_small"]
    info = run("info", "mobilenet_v3_small", "--json")
    assert info["head"] == "classifier.3" and info["in_features"] == 1024
    assert len(info["groups"]) == 14 and info["groups"][-1]["name"] == "head"
