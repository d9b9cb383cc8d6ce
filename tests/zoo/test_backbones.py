"""Every registered backbone, randomly initialised at a small input: the checks any
plugin's backbone must pass (zoo_adapt.testing: head swap, layer groups, static facts,
export), then freezing and per-group rates. Backbones above 40M parameters run in the
slow tier (`pytest -m slow`), built one at a time."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch.nn.modules.batchnorm import _BatchNorm

import zoo_adapt
from zoo_adapt import testing
from zoo_adapt.zoo.answers import describe
from zoo_adapt.zoo.registry import entries

N = 7
LARGE = 40_000_000  # parameters: larger backbones are in the slow tier (pytest -m slow)
NAMES = [
    pytest.param(name, marks=[pytest.mark.slow] if entry.extra.get("params", 0) > LARGE else [])
    for name, entry in entries().items()
]


@pytest.fixture(scope="module", params=NAMES)
def model(request):
    """One model alive at a time: pytest groups the tests by this module-scoped param."""
    torch.manual_seed(0)
    return zoo_adapt.create_model(request.param, num_classes=N, pretrained=False)


def plain_upstream(library: str, upstream: str, num_classes: int):
    """The upstream architecture as its own library builds it, without zoo-adapt."""
    if library == "torchvision":
        return torchvision.models.get_model(upstream, num_classes=num_classes)
    return timm.create_model(upstream, num_classes=num_classes)


def test_head_swap_gives_n_outputs(model):
    testing.check_head_swap(model, N)


def test_groups_cover_every_parameter_once_in_order(model):
    testing.check_groups(model)
    assert zoo_adapt.group_parameters(model)[-1][0] == "head"  # the built-ins' convention


@pytest.mark.parametrize("k", [0, 1, -1, "last-but-one"])
def test_freeze_to_trains_exactly_groups_from_k(model, k):
    groups = zoo_adapt.group_parameters(model)
    n = len(groups)
    k = n - 2 if k == "last-but-one" else k
    first = k % n if k < 0 else k
    zoo_adapt.freeze_to(model, k, bn="frozen")
    for i, (_, params) in enumerate(groups):
        assert all(p.requires_grad == (i >= first) for _, p in params)
    zoo_adapt.freeze_to(model, k, bn="train")
    bn = {
        f"{m}.{p}"
        for m, mod in model.named_modules()
        if isinstance(mod, _BatchNorm)
        for p, _ in mod.named_parameters(recurse=False)
    }
    for i, (_, params) in enumerate(groups):
        for name, p in params:
            assert p.requires_grad == (i >= first or name in bn), name
    zoo_adapt.unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())


def test_param_groups_carry_the_expected_rates(model):
    n = len(zoo_adapt.group_parameters(model))
    by_group = lambda pgs: {g["group_index"]: g["lr"] for g in pgs}  # noqa: E731
    spread = by_group(zoo_adapt.param_groups(model, lr=1e-2, lr_body=1e-4))
    assert spread[0] == pytest.approx(1e-4) and spread[n - 1] == pytest.approx(1e-2)
    ratios = [spread[i + 1] / spread[i] for i in range(n - 1)]
    assert ratios == pytest.approx([ratios[0]] * (n - 1))  # geometric
    decay = by_group(zoo_adapt.param_groups(model, lr=1e-3, lr_decay=0.5))
    assert [decay[i] for i in range(n)] == pytest.approx([1e-3 * 0.5 ** (n - 1 - i) for i in range(n)])
    explicit = [float(i + 1) for i in range(n)]
    assert [by_group(zoo_adapt.param_groups(model, lr=1, lrs=explicit))[i] for i in range(n)] == explicit
    pgs = zoo_adapt.param_groups(model, lr=1e-3, weight_decay=0.05)
    assert sum(len(g["params"]) for g in pgs) == len(list(model.parameters()))
    assert all(g["weight_decay"] == 0 for g in pgs for p in g["params"] if p.ndim <= 1)


def test_static_facts_match_the_built_model(model):
    testing.check_static_facts(model)
    static = describe(model.zoo_adapt.entry)  # and `list` knows them all for the built-ins
    assert None not in (static.head, static.num_groups, static.normalization)


def test_export_loads_into_the_plain_upstream_model(model, tmp_path):
    b = model.zoo_adapt
    testing.check_export(model, tmp_path, upstream=lambda n: plain_upstream(b.source.library, b.entry.upstream, n))


TORCHVISION = [name for name, entry in entries().items() if entry.plugin in ("resnet", "efficientnet")]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_recipes_are_torchvisions_own(name):
    """The preprocessing the plugins report for torchvision's weights is what
    `weights.transforms()` does: the plugins' tables are checked against torchvision,
    not against themselves."""
    entry = entries()[name]
    norm = describe(entry).normalization
    recipe = torchvision.models.get_model_weights(entry.upstream)[entry.weights].transforms()
    assert list(norm.mean) == pytest.approx(list(recipe.mean)) and list(norm.std) == pytest.approx(list(recipe.std))
    assert norm.image_size == recipe.crop_size[0]
    assert norm.resize_size() == recipe.resize_size[0]
    assert norm.interpolation == recipe.interpolation.value
