"""Plugins in-process: third-party backbones, routing (a plugin is asked only about its
own backbones), declared overrides, wrappers and tracing through pluggy, one-line errors
naming the plugin, name collisions, broken and disabled plugins contained, and
`zoo_adapt.testing.registered` putting an installed copy aside. Installed plugins and
the guide's examples: tests/test_plugins_installed.py."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import zoo_adapt
from zoo_adapt import ZooAdaptError, hookimpl, override
from zoo_adapt.adapt.method import make_method
from zoo_adapt.errors import PluginError, ZooAdaptWarning
from zoo_adapt.plugin_api import IMAGENET, Head, LayerGroup, Normalization, Source
from zoo_adapt.testing import check_backbone, registered
from zoo_adapt.zoo.answers import describe
from zoo_adapt.zoo.methods import adaptation_methods
from zoo_adapt.zoo.plugins import get_plugin_manager, installed_plugins, plugin_info
from zoo_adapt.zoo.registry import entries, resolve

from helpers import ROOT

PLUGINS = ROOT / "plugins"


class TinyNet(nn.Module):
    """Stands in for a third party's upstream architecture."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)))


class ToyZoo:
    """A complete plugin serving backbones named `name`: no ownership checks anywhere."""

    def __init__(self, name: str = "tinynet"):
        self.name = name

    @hookimpl
    def register_backbones(self, register):
        register(self.name, upstream="TinyNet", description="a test network")

    @hookimpl
    def build_backbone(self, entry, pretrained):
        return TinyNet()

    @hookimpl
    def backbone_head(self, entry):
        return Head("fc", 16)

    @hookimpl
    def backbone_groups(self, entry):
        return [LayerGroup("stem", ("stem",)), LayerGroup("body", ("body",)), LayerGroup("head", ("fc",))]

    @hookimpl
    def backbone_normalization(self, entry):
        return Normalization(**IMAGENET, input_size=(3, 32, 32))

    @hookimpl
    def backbone_source(self, entry):
        return Source("toy", None, "bundled")


def test_third_party_plugin_builds_passes_the_checks_and_shows_in_list(plugin, run_cli, tmp_path):
    plugin(ToyZoo(), "toyzoo")
    model = zoo_adapt.create_model("tinynet", num_classes=4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    check_backbone("tinynet", tmp_path, num_classes=4, image_size=32)
    listed = {c["name"]: c for c in json.loads(run_cli("list", "--json").output)}
    assert listed["tinynet"]["plugin"] == "toyzoo"
    assert listed["tinynet"]["num_groups"] == 3 and listed["tinynet"]["head"] == "fc"
    assert "toyzoo" in {p["name"] for p in json.loads(run_cli("plugins", "--json").output)}
    zoo_adapt.unregister_plugin("toyzoo")
    assert "tinynet" not in {c["name"] for c in json.loads(run_cli("list", "--json").output)}


class Greedy:
    """Answers every backbone_groups question it is asked, with tryfirst: it must not be
    asked about backbones it does not serve, since it declares no override."""

    calls: list[str] = []

    @hookimpl(tryfirst=True)
    def backbone_groups(self, entry):
        self.calls.append(entry.name)
        return [LayerGroup("all", ("",))]


def test_questions_go_only_to_the_serving_plugin(plugin):
    plugin(Greedy(), "greedy")
    plugin(ToyZoo(), "toyzoo")
    assert describe("resnet18").num_groups == 6 and describe("tinynet").num_groups == 3
    assert describe("resnet18").answered_by["backbone_groups"] == "resnet"
    assert Greedy.calls == []


class CoarseResnet:
    """Overrides one answer of the built-in resnet plugin for one model."""

    @override("resnet18")
    def backbone_groups(self, entry):
        return [
            LayerGroup("body", ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")),
            LayerGroup("head", ("fc",)),
        ]


def test_a_declared_override_answers_for_the_named_backbone_only(plugin, run_cli):
    assert describe("resnet18").num_groups == 6
    plugin(CoarseResnet(), "coarse")
    model = zoo_adapt.create_model("resnet18", num_classes=3, pretrained=False)
    assert [g for g, _ in zoo_adapt.group_parameters(model)] == ["body", "head"]
    assert model.zoo_adapt.answered_by["backbone_groups"] == "coarse"
    assert model.zoo_adapt.answered_by["backbone_head"] == "resnet"
    assert describe("resnet18").num_groups == 2  # `list` agrees
    assert describe("resnet34").num_groups == 6  # other models untouched
    shown = {p["name"]: p for p in json.loads(run_cli("plugins", "--json").output)}
    assert shown["coarse"]["overrides"] == [{"backbone": "resnet18", "hook": "backbone_groups"}]
    assert "coarse (override): backbone_groups" in run_cli("info", "resnet18").output
    zoo_adapt.unregister_plugin("coarse")
    assert describe("resnet18").num_groups == 6


def test_two_overrides_of_one_answer_name_both(plugin):
    plugin(CoarseResnet(), "coarse")
    plugin(CoarseResnet(), "coarser")
    with pytest.raises(PluginError, match=r"plugin 'coarse' .*plugin 'coarser' .*both override backbone_groups"):
        describe("resnet18")
    assert describe("resnet34").num_groups == 6


class Recorder:
    """A new-style wrapper: sees every backbone_groups call, whoever answers it."""

    def __init__(self):
        self.seen = []

    @hookimpl(wrapper=True)
    def backbone_groups(self, entry):
        groups = yield
        self.seen.append((entry.name, len(groups) if groups else None))
        return groups


def test_wrappers_and_tracing_see_routed_calls(plugin):
    recorder = plugin(Recorder(), "recorder")
    plugin(ToyZoo(), "toyzoo")
    lines: list[str] = []
    pm = get_plugin_manager()
    pm.trace.root.setwriter(lines.append)
    undo = pm.enable_tracing()
    try:
        describe("resnet18"), describe("tinynet")
    finally:
        undo()
        pm.trace.root.setwriter(None)
    assert recorder.seen == [("resnet18", 6), ("tinynet", 3)]
    assert sum("backbone_groups [hook]" in line for line in lines) == 2


def _explode():
    return [][0]


class Crashy(ToyZoo):
    @hookimpl
    def backbone_groups(self, entry):
        return _explode()


class GrumpyWrapper:
    @hookimpl(wrapper=True)
    def backbone_head(self, entry):
        yield
        raise RuntimeError("wrapper says no")


def test_an_exception_in_a_hook_is_one_line_naming_plugin_and_hook(plugin, run_cli):
    plugin(Crashy("crashnet"), "crashy")
    with pytest.raises(PluginError) as e:
        zoo_adapt.create_model("crashnet", pretrained=False)
    assert str(e.value) == (
        "plugin 'crashy' (registered in-process) failed in backbone_groups for 'crashnet': "
        "IndexError: list index out of range (ZOO_ADAPT_DEBUG=1 shows the traceback)"
    )
    assert isinstance(e.value.__cause__, IndexError)
    result = run_cli("info", "crashnet")
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "plugin 'crashy'" in result.output
    with pytest.raises(PluginError):  # --debug: the exception (and its traceback) comes through
        run_cli("--debug", "info", "crashnet")
    plugin(GrumpyWrapper(), "grumpy")  # blamed from the traceback, though resnet answered
    with pytest.raises(PluginError, match=r"plugin 'grumpy' .*failed in backbone_head for 'resnet18': RuntimeError"):
        describe("resnet18")


class Misspelt:
    @hookimpl
    def backbone_haed(self, entry):
        return None


class WrongArgument:
    @hookimpl
    def backbone_head(self, entry, modle):
        return None


class MisplacedOverride:
    @override("resnet18")
    def register_backbones(self, register):
        pass


class WrongAnswer:
    @override("resnet18")
    def backbone_head(self, entry):
        return "fc"


class GroupsMissParameters:
    @override("resnet18")
    def backbone_groups(self, entry):
        return [LayerGroup("stem", ("conv1", "bn1")), LayerGroup("head", ("fc",))]


def test_bad_hook_implementations_are_rejected_with_plugin_name():
    with pytest.raises(ZooAdaptError, match=r"plugin 'typo'.*'backbone_haed'.*did you mean 'backbone_head'"):
        zoo_adapt.register_plugin(Misspelt(), "typo")
    with pytest.raises(ZooAdaptError, match=r"plugin 'badargs'.*modle"):
        zoo_adapt.register_plugin(WrongArgument(), "badargs")
    with pytest.raises(ZooAdaptError, match=r"plugin 'misplaced'.*override\(\) on register_backbones"):
        zoo_adapt.register_plugin(MisplacedOverride(), "misplaced")
    with pytest.raises(ZooAdaptError, match=r"plugin name 'resnet' is taken \(zoo-adapt "):
        zoo_adapt.register_plugin(ToyZoo(), "resnet")
    assert not {"typo", "badargs", "misplaced"} & {p.name for p in installed_plugins()}


def test_malformed_answers_name_the_plugin(plugin):
    plugin(WrongAnswer(), "wronganswer")
    with pytest.raises(ZooAdaptError, match=r"plugin 'wronganswer' answered backbone_head.*str, not Head"):
        describe("resnet18")
    zoo_adapt.unregister_plugin("wronganswer")
    plugin(GroupsMissParameters(), "holes")
    with pytest.raises(ZooAdaptError, match=r"plugin 'holes'.*'layer1\.0\.conv1\.weight' is in no group"):
        zoo_adapt.create_model("resnet18", pretrained=False)


class ReversedGroups:
    @override("resnet18")
    def backbone_groups(self, entry):
        body = [LayerGroup(f"layer{i}", (f"layer{i}",)) for i in range(4, 0, -1)]
        return body + [LayerGroup("stem", ("conv1", "bn1")), LayerGroup("head", ("fc",))]


def test_groups_out_of_order_are_rejected_not_trained(plugin):
    plugin(ReversedGroups(), "reversed")
    with pytest.raises(
        ZooAdaptError,
        match=r"plugin 'reversed'.*'layer1\.0\.conv1\.weight' \(group 'layer1'\) "
        r"comes after group 'stem'; groups must run stem to head",
    ):
        zoo_adapt.create_model("resnet18", pretrained=False)


def test_export_names_the_weights_the_model_started_from(tmp_path):
    from zoo_adapt.model.weights import safetensors_metadata
    from zoo_adapt.ship.export import export_model

    model = zoo_adapt.create_model("resnet18", num_classes=2, pretrained=False)
    path = export_model(model, tmp_path / "scratch.safetensors", ["a", "b"])
    assert safetensors_metadata(path)["pretrained_weights"] == "None"  # not the entry's IMAGENET1K_V1
    assert zoo_adapt.create_model("resnet18", weights=path).zoo_adapt.initial_weights == str(path)


def test_builtins_come_through_the_entry_point_group_using_only_the_public_api():
    by_name = {p.name: p for p in installed_plugins()}
    for name in ("resnet", "efficientnet", "vit", "timm", "efficientnet_lite", "adaptation"):
        assert by_name[name].distribution == "zoo-adapt" and by_name[name].status == "ok"
        assert by_name[name].module.startswith("zoo_adapt_plugins.")
    for path in PLUGINS.glob("*.py"):
        source = path.read_text()
        imported = set(re.findall(r"^from (zoo_adapt\S*) import", source, re.M))
        assert imported <= {"zoo_adapt.plugin_api"}, (path.name, imported)
        assert not re.search(r"\bPLUGIN\b|entry\.plugin [!=]=", source), path.name


class Squatter:
    @hookimpl
    def register_backbones(self, register):
        register("resnet50", upstream="TinyNet")


class Usurper(ToyZoo):
    @hookimpl
    def register_backbones(self, register):
        register("resnet34", upstream="TinyNet", override=True)


def test_backbone_name_collisions_name_both_sides_and_stay_contained(plugin):
    plugin(Squatter(), "squatter")
    with pytest.warns(ZooAdaptWarning, match=r"plugin 'squatter' .*backbone name 'resnet50' is zoo-adapt's own"):
        assert resolve("resnet50").plugin == "resnet"
    plugin(ToyZoo("twinnet"), "twin_a")
    plugin(ToyZoo("twinnet"), "twin_b")
    with (
        pytest.warns(ZooAdaptWarning),
        pytest.raises(ZooAdaptError, match=r"'twinnet' is claimed by both plugin 'twin_a' .* and plugin 'twin_b'"),
    ):
        zoo_adapt.create_model("twinnet")
    assert "twinnet" not in entries()
    assert zoo_adapt.create_model("resnet18", pretrained=False, num_classes=2)(torch.randn(2, 3, 32, 32)).shape == (
        2,
        2,
    )
    plugin(Usurper(), "usurper")
    assert resolve("resnet34").plugin == "usurper"


class FlakyRegistration(ToyZoo):
    @hookimpl
    def register_backbones(self, register):
        raise RuntimeError("registry service down")


def test_a_plugin_failing_to_register_is_broken_and_contained(plugin, run_cli):
    with pytest.warns(ZooAdaptWarning, match=r"plugin 'flaky' \(registered in-process\) is broken"):
        plugin(FlakyRegistration("flakynet"), "flaky")
        entries()
    assert plugin_info("flaky").status == "broken"
    shown = {p["name"]: p for p in json.loads(run_cli("plugins", "--json").output)}
    assert shown["flaky"]["status"] == "broken" and "registry service down" in shown["flaky"]["problem"]
    with pytest.raises(ZooAdaptError, match=r"needs plugin 'flaky' .*which is broken: register_backbones raised"):
        describe("flaky/anything")
    assert zoo_adapt.create_model("resnet18", pretrained=False).zoo_adapt.num_groups == 6
    assert make_method("dann", 8, 2, _config()) is not None
    assert run_cli("list", "--json").exit_code == 0 and run_cli("methods").exit_code == 0


def _config():
    from zoo_adapt.job.config import FinetuneConfig

    return FinetuneConfig()


class Methods:
    def __init__(self, name: str, override: bool = False):
        self.name, self.override = name, override

    @hookimpl
    def register_adaptation_methods(self, register):
        from zoo_adapt.adapt.method import AdaptationMethod

        register(self.name, AdaptationMethod, "a method", override=self.override)


def test_method_name_collisions_name_both_sides(plugin, run_cli):
    plugin(Methods("twin"), "methods_a")
    plugin(Methods("twin"), "methods_b")
    with (
        pytest.warns(ZooAdaptWarning),
        pytest.raises(ZooAdaptError, match=r"adaptation method 'twin' is claimed by both plugin 'methods_a'"),
    ):
        make_method("twin", 8, 2, _config())
    plugin(Methods("mcc"), "mcc_squatter")
    with pytest.warns(ZooAdaptWarning, match=r"plugin 'mcc_squatter' .*adaptation method 'mcc' is zoo-adapt's own"):
        assert adaptation_methods()["mcc"].plugin == "adaptation"
    plugin(Methods("dann", override=True), "dann_usurper")
    listed = {m["name"]: m for m in json.loads(run_cli("methods", "--json").output)}
    assert listed["dann"]["plugin"] == "dann_usurper" and listed["dann"]["replaces"] == ["adaptation"]
    assert "twin" not in listed and listed["mcc"]["plugin"] == "adaptation"


def test_disable_plugin_option_skips_it_for_one_command(run_cli):
    shown = {p["name"]: p for p in json.loads(run_cli("--disable-plugin", "resnet", "plugins", "--json").output)}
    assert shown["resnet"]["status"] == "disabled" and shown["vit"]["status"] == "ok"
    result = run_cli("--disable-plugin", "resnet", "info", "resnet18")
    assert result.exit_code == 1 and "needs plugin 'resnet' (zoo-adapt" in result.output and "disabled" in result.output
    cards = {c["name"]: c for c in json.loads(run_cli("--disable-plugin", "resnet", "list", "--json").output)}
    assert "disabled" in cards["resnet18"]["problem"] and cards["vit_t16"]["head"] == "head"
    assert describe("resnet18").num_groups == 6  # back after the command


class ResnetDevCopy:
    """A development copy of the installed resnet plugin, with two groups."""

    @hookimpl
    def build_backbone(self, entry, pretrained):
        import torchvision

        return torchvision.models.get_model(entry.upstream)

    @hookimpl
    def backbone_head(self, entry):
        return Head("fc", 512)

    @hookimpl
    def backbone_groups(self, entry):
        return CoarseResnet().backbone_groups(entry)

    @hookimpl
    def backbone_normalization(self, entry):
        return Normalization(**IMAGENET)


def test_registered_puts_an_installed_copy_aside():
    with registered(ResnetDevCopy(), "resnet"):
        assert describe("resnet18").num_groups == 2 and plugin_info("resnet").distribution is None
        assert zoo_adapt.create_model("resnet18", num_classes=2).zoo_adapt.num_groups == 2
    assert describe("resnet18").num_groups == 6 and plugin_info("resnet").distribution == "zoo-adapt"


def test_plugin_api_imports_no_torch_and_its_method_base_no_engine():
    import subprocess
    import sys

    code = (
        "import sys, zoo_adapt.plugin_api, zoo_adapt_plugins.resnet, zoo_adapt_plugins.adaptation; "
        "print('torch' in sys.modules); from zoo_adapt.plugin_api import AdaptationMethod; "
        "print(any(m.startswith(('zoo_adapt.engine', 'zoo_adapt.adapt.callback')) and m != "
        "'zoo_adapt.adapt.method' for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr
