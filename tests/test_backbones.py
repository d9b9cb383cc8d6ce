"""Every registered backbone, randomly initialised at a small input: head swap, layer
groups, freezing, per-group rates, and that `list`'s static facts match the model."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch.nn.modules.batchnorm import _BatchNorm

import zoo_adapt
from zoo_adapt.backbone import describe
from zoo_adapt.registry import entries

NAMES = list(entries())
N = 7


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
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, N)
    assert zoo_adapt.backbone_of(model).head.in_features == model.get_submodule(
        model.zoo_adapt.head.attr).in_features


def test_groups_cover_every_parameter_once_in_order(model):
    groups = zoo_adapt.group_parameters(model)
    owner = {n: i for i, (_, params) in enumerate(groups) for n, _ in params}
    names = [n for n, _ in model.named_parameters()]
    assert sorted(owner) == sorted(names) and len(owner) == len(names)
    order = [owner[n] for n in names]
    assert order == sorted(order), "groups must run stem to head in parameter order"
    assert groups[-1][0] == "head"
    assert {n for n, _ in groups[-1][1]} >= {n for n in names if n.startswith(model.zoo_adapt.head.attr + ".")}


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
    bn = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, _BatchNorm)
          for p, _ in mod.named_parameters(recurse=False)}
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
    static, live = describe(model.zoo_adapt.entry), model.zoo_adapt
    assert static.head == live.head
    assert static.num_groups == live.num_groups
    assert static.normalization == live.normalization


def test_state_dict_fits_the_plain_upstream_model(model):
    b = model.zoo_adapt
    plain = plain_upstream(b.source.library, b.entry.upstream, N)
    plain.load_state_dict(model.state_dict(), strict=True)
