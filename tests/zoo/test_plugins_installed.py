"""Plugins installed as distributions (dist-info folders with entry points on
PYTHONPATH), seen by fresh `zoo-adapt` processes: the guide's two examples with their
own tests, and broken, colliding and disabled plugins contained, each reported on one
line naming the plugin and its distribution."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from zoo_adapt.testing import registered
from zoo_adapt.zoo.answers import describe
from zoo_adapt.zoo.registry import tomllib

from helpers import ROOT, ZOO

DOCS = ROOT / "docs" / "plugins.md"


def install(site: Path, dist: str, entry_points: dict[str, str], files: dict[str, str], version: str = "0.1.0") -> None:
    """What pip leaves behind: the files, and a dist-info folder with the entry points."""
    for path, text in files.items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text(text)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[zoo_adapt]\n{lines}")


def environment(site: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_ADAPT_")}
    return {**env, "PYTHONPATH": path, **extra}


def zoo(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(ZOO + list(args), env=environment(site, **env), capture_output=True, text=True, timeout=300)


def ok_json(out: subprocess.CompletedProcess):
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def train(site: Path, out: Path, data: Path, *args: str) -> dict:
    """A one-epoch fine-tune at 32 pixels from random weights; its metrics."""
    done = zoo(
        site,
        "finetune",
        "--no-pretrained",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--no-tta",
        "--analysis",
        "off",
        *args,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "model.safetensors").is_file()
    return json.loads((out / "metrics.json").read_text())


def guide_files(section: str) -> dict[str, str]:
    """The files a section of docs/plugins.md shows: "`name`:" then a code block."""
    body = DOCS.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^`([\w/.]+)`:\n\n```\w+\n(.*?)```", body, re.S | re.M))


@pytest.mark.parametrize(
    "section", ["A complete backbone plugin", "A complete adaptation method", "A complete tracker"]
)
def test_guide_example_installs_lists_trains_and_passes_its_own_test(tmp_path, section, demo):
    """Written from the guide alone: installed, its own test (zoo_adapt.testing) passes,
    zoo-adapt lists it, and a fine-tune with it runs and exports."""
    files = guide_files(section)
    pyproject = tomllib.loads(files.pop("pyproject.toml"))
    tests = {name: text for name, text in files.items() if name.startswith("test_")}
    assert tests and len(files) > len(tests), files.keys()
    entry_points = pyproject["project"]["entry-points"]["zoo_adapt"]
    site = tmp_path / "site"
    install(
        site,
        pyproject["project"]["name"],
        entry_points,
        {name: text for name, text in files.items() if name not in tests},
    )
    for name, text in tests.items():
        (tmp_path / name).write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=tmp_path,
        env=environment(site),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (plugin,) = entry_points
    shown = {p["name"]: p for p in ok_json(zoo(site, "plugins", "--json"))}
    assert shown[plugin]["distribution"] == pyproject["project"]["name"] and shown[plugin]["status"] == "ok"
    if "mobilenet" in plugin:
        assert shown[plugin]["backbones"] == ["mobilenet_v3_small"]
        assert "mobilenet_v3_small" in {c["name"] for c in ok_json(zoo(site, "list", "--json"))}
        info = ok_json(zoo(site, "info", "mobilenet_v3_small", "--json"))
        assert info["head"] == "classifier.3" and info["in_features"] == 1024
        assert len(info["groups"]) == 14 and info["groups"][-1]["name"] == "head"
        metrics = train(site, tmp_path / "run", demo, "--backbone", "mobilenet_v3_small")
        assert metrics["val_accuracy"] is not None
    elif "jsonl" in plugin:
        assert shown[plugin]["trackers"] == ["jsonl"]
        listed = {t["name"]: t for t in ok_json(zoo(site, "trackers", "--json"))}
        assert listed["jsonl"]["plugin"] == plugin and not listed["jsonl"]["missing"]
        train(site, tmp_path / "run", demo, "--backbone", "resnet18", "--log", "jsonl")
        lines = [json.loads(line) for line in open(tmp_path / "run" / "jsonl" / "metrics.jsonl")]
        assert lines[0]["params"]["log"] == "jsonl" and lines[-1] == {"status": "finished"}
        assert any(r.get("scope") == "step" and "step/lr/head" in r for r in lines)
        assert {"artifact": "model.safetensors"} in lines
    else:
        methods = {m["name"]: m for m in ok_json(zoo(site, "methods", "--json"))}
        assert methods["coral"]["plugin"] == plugin and {"dann", "mcc"} <= set(methods)
        shown = ok_json(zoo(site, "methods", "coral", "--json"))
        assert [o["name"] for o in shown["options"]] == ["start"] and "coral_gap" in shown["figures"]
        metrics = train(
            site,
            tmp_path / "run",
            demo,
            "--backbone",
            "resnet18",
            "--target-data",
            str(demo / "val"),
            "--adapt",
            "coral",
            "--steps-per-epoch",
            "2",
            "--adapt-option",
            "start=0.5",
        )
        assert "coral_gap" in metrics["history"][-1] and metrics["adaptation"]["options"] == {"start": 0.5}
        assert (tmp_path / "run" / "adaptation.png").is_file()


def test_guide_override_snippet_overrides_one_answer():
    body = DOCS.read_text().split("\n## Overriding a built-in answer\n", 1)[1]
    module = types.ModuleType("override_snippet")
    exec(re.search(r"```python\n(.*?)```", body, re.S)[1], module.__dict__)
    with registered(module, "coarse"):
        assert describe("resnet50").num_groups == 2 and describe("resnet50").answered_by["backbone_groups"] == "coarse"
        assert describe("resnet101").num_groups == 6


TOY = """
from zoo_adapt.plugin_api import Head, LayerGroup, Normalization, IMAGENET, hookimpl


@hookimpl
def register_backbones(register):
    register({name!r}, upstream="toy")


@hookimpl
def build_backbone(entry, pretrained):
    import torch.nn as nn

    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))


@hookimpl
def backbone_head(entry):
    return Head("1", 192)


@hookimpl
def backbone_groups(entry):
    return {groups}


@hookimpl
def backbone_normalization(entry):
    return Normalization(**IMAGENET, input_size=(3, 8, 8))
"""
GREEDY = """
from zoo_adapt.plugin_api import INCEPTION, Normalization, hookimpl


@hookimpl(tryfirst=True)
def backbone_normalization(entry):  # no ownership check: must change nothing of others'
    return Normalization(**INCEPTION, input_size=(3, 99, 99))
"""
USER_REGISTRY = """
[brokennet]
plugin = "broken"
upstream = "x"

[clashnet]
plugin = "clash_a"
upstream = "toy"

[rn18]
rename = "resnet18"

[resnet50]
plugin = "resnet"
upstream = "resnet50"
weights = "IMAGENET1K_V1"
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A broken plugin, one whose hook raises, two distributions with one entry-point
    name, and two plugins registering one backbone name."""
    site = tmp_path_factory.mktemp("site")
    fine = '[LayerGroup("head", ("1",))]'
    install(
        site,
        "zoo-adapt-broken",
        {"broken": "zoo_adapt_broken"},
        {"zoo_adapt_broken.py": "raise ImportError('needs zoo-adapt 9')\n"},
    )
    install(
        site,
        "zoo-adapt-crashy",
        {"crashy": "zoo_adapt_crashy"},
        {"zoo_adapt_crashy.py": TOY.format(name="crashnet", groups="[][0]")},
    )
    install(
        site,
        "zoo-adapt-typo",
        {"typo": "zoo_adapt_typo"},
        {
            "zoo_adapt_typo.py": TOY.format(name="typonet", groups=fine).replace(
                "def backbone_head(", "def backbone_haed("
            )
        },
    )
    install(site, "zab-aaa", {"aaa": "zab_aaa"}, {"zab_aaa.py": GREEDY})  # loaded first
    for side in "ab":
        install(
            site,
            f"zoo-adapt-twin-{side}",
            {"twin": f"zoo_adapt_twin_{side}"},
            {f"zoo_adapt_twin_{side}.py": ""},
            version=f"1.{side == 'b':d}",
        )
        install(
            site,
            f"zoo-adapt-clash-{side}",
            {f"clash_{side}": f"zoo_adapt_clash_{side}"},
            {f"zoo_adapt_clash_{side}.py": TOY.format(name="clashnet", groups=fine)},
        )
    (site / "user.toml").write_text(USER_REGISTRY)
    return site


def test_broken_and_colliding_plugins_are_reported_once_and_contained(site, demo, tmp_path):
    out = zoo(site, "list", "--json")
    cards = {c["name"]: c for c in ok_json(out)}
    warnings = out.stderr.strip().splitlines()
    assert all(w.startswith("warning: ") for w in warnings) and len(warnings) == 4, warnings
    assert any("plugin 'broken' (zoo-adapt-broken 0.1.0) is broken" in w and "needs zoo-adapt 9" in w for w in warnings)
    assert any(
        "plugin 'typo' (zoo-adapt-typo 0.1.0) is broken" in w and "did you mean 'backbone_head'" in w for w in warnings
    )
    assert any("plugin 'twin'" in w and "zoo-adapt-twin-a 1.0 and zoo-adapt-twin-b 1.1" in w for w in warnings)
    assert any(
        "'clashnet' is claimed by both plugin 'clash_a' (zoo-adapt-clash-a 0.1.0) and plugin "
        "'clash_b' (zoo-adapt-clash-b 0.1.0)" in w
        for w in warnings
    )
    assert cards["resnet18"]["num_groups"] == 6 and "clashnet" not in cards
    assert cards["resnet18"]["input_size"] == [3, 224, 224] and cards["vit_t16"]["mean"] == [0.5] * 3  # not aaa's
    assert "failed in backbone_groups" in cards["crashnet"]["problem"]  # its row only
    shown = {p["name"]: p for p in ok_json(zoo(site, "plugins", "--json"))}
    assert shown["broken"]["status"] == "broken" and "failed to import" in shown["broken"]["problem"]
    assert shown["twin"]["status"] == "broken" and shown["crashy"]["status"] == "ok"
    assert "dann" in {m["name"] for m in ok_json(zoo(site, "methods", "--json"))}
    assert ok_json(zoo(site, "info", "resnet18", "--json"))["num_groups"] == 6

    out = zoo(site, "info", "crashnet")
    *_, last = out.stderr.strip().splitlines()
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert last.startswith(
        "Error: plugin 'crashy' (zoo-adapt-crashy 0.1.0) failed in backbone_groups for "
        "'crashnet': IndexError: list index out of range"
    ), out.stderr
    out = zoo(site, "info", "crashnet", ZOO_ADAPT_DEBUG="1")
    assert out.returncode == 1 and "Traceback" in out.stderr and "zoo_adapt_crashy.py" in out.stderr
    out = zoo(site, "info", "clashnet")
    assert out.returncode == 1 and "zoo-adapt-clash-a 0.1.0" in out.stderr and "zoo-adapt-clash-b" in out.stderr
    metrics = train(site, tmp_path / "run", demo, "--backbone", "resnet18")  # a built-in still trains
    assert metrics["val_accuracy"] is not None


def test_disabled_plugins_are_not_even_imported(site):
    disable = {"ZOO_ADAPT_DISABLE_PLUGINS": "broken,twin,clash_b,typo"}
    out = zoo(site, "list", "--json", **disable)
    assert out.stderr == "" and "clashnet" in {c["name"] for c in ok_json(out)}
    shown = {p["name"]: p for p in ok_json(zoo(site, "plugins", "--json", **disable))}
    assert {shown[n]["status"] for n in ("broken", "twin", "clash_b", "typo")} == {"disabled"}
    out = zoo(
        site, *[a for n in ("broken", "twin", "clash_b", "typo") for a in ("--disable-plugin", n)], "list", "--json"
    )
    assert out.stderr == "" and "clashnet" in {c["name"] for c in ok_json(out)}


def test_a_user_registry_renames_repoints_and_settles_and_list_says_so(site):
    out = zoo(site, "--registry", str(site / "user.toml"), "list", "--json")
    cards = {c["name"]: c for c in ok_json(out)}
    assert "resnet18" not in cards and cards["rn18"]["note"] == "renames resnet18 (registry.toml)"
    assert cards["rn18"]["num_groups"] == 6 and cards["rn18"]["upstream"] == "resnet18"
    assert cards["resnet50"]["note"].startswith("re-points resnet50 (was resnet/resnet50, registry.toml)")
    assert cards["resnet50"]["weights"] == "IMAGENET1K_V1"
    assert cards["clashnet"]["note"] == "settles a collision of plugins" and cards["clashnet"]["plugin"] == "clash_a"
    assert "which is broken" in cards["brokennet"]["problem"]
    text = zoo(site, "--registry", str(site / "user.toml"), "list").stdout
    assert f"rn18: renames resnet18 (registry.toml), by {site / 'user.toml'}" in text
    assert "brokennet: unusable: backbone 'brokennet' needs plugin 'broken' (zoo-adapt-broken 0.1.0)" in text


SLOW = """
import time

import torch  # noqa: F401 (what a plugin must not do at import time)

time.sleep(1.1)  # slower than the limit however quickly torch imports here
"""


@pytest.fixture(scope="module")
def squatting_site(tmp_path_factory):
    """A third party whose entry point is named like the built-in `resnet`, and a plugin
    that imports torch at import time."""
    site = tmp_path_factory.mktemp("squatting")
    install(
        site,
        "zoo-adapt-resnet-extra",
        {"resnet": "zoo_adapt_resnet_extra"},
        {"zoo_adapt_resnet_extra.py": TOY.format(name="extranet", groups='[LayerGroup("head", ("1",))]')},
        version="2.0",
    )
    install(site, "zoo-adapt-slow", {"slow": "zoo_adapt_slow"}, {"zoo_adapt_slow.py": SLOW})
    return site


def test_a_third_party_named_like_a_built_in_is_skipped_and_the_built_in_keeps_its_name(squatting_site):
    out = zoo(squatting_site, "--disable-plugin", "slow", "list", "--json")
    cards = {c["name"]: c for c in ok_json(out)}
    assert all(cards[f"resnet{n}"]["num_groups"] == 6 for n in (18, 34, 50, 101, 152)) and "extranet" not in cards
    assert out.stderr.strip().splitlines() == [
        "warning: plugin 'resnet' (zoo-adapt-resnet-extra 2.0) was skipped: its entry-point name 'resnet' is "
        "zoo-adapt's built-in plugin's, which keeps it; rename the entry point to use both"
    ]
    shown = {p["name"]: p for p in ok_json(zoo(squatting_site, "--disable-plugin", "slow", "plugins", "--json"))}
    assert shown["resnet"]["status"] == "ok" and shown["resnet"]["distribution"] == "zoo-adapt"

    for how in (("--disable-plugin", "resnet"), ()):
        env = {} if how else {"ZOO_ADAPT_DISABLE_PLUGINS": "resnet"}
        out = zoo(squatting_site, *how, "--disable-plugin", "slow", "list", "--json", **env)
        cards = {c["name"]: c for c in ok_json(out)}
        assert "disabled" in cards["resnet50"]["problem"] and "extranet" not in cards
        assert out.stderr.strip().splitlines() == [
            "warning: --disable-plugin resnet (or $ZOO_ADAPT_DISABLE_PLUGINS) disables zoo-adapt's built-in plugin "
            "'resnet'; plugin 'resnet' (zoo-adapt-resnet-extra 2.0) stays skipped, its entry-point name being the "
            "built-in's (rename it to use it)"
        ], out.stderr


def test_a_plugin_slow_to_import_is_named(squatting_site):
    out = zoo(squatting_site, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    slow = [line for line in out.stderr.splitlines() if "to import" in line]
    assert len(slow) == 1, out.stderr
    assert slow[0].startswith("warning: plugin 'slow' (zoo-adapt-slow 0.1.0) took ")
    assert "(it imports torch at import time; import them inside the hooks); every zoo-adapt command waits" in slow[0]
