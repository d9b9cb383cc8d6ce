"""zoo-adapt's DANN step is Ganin et al.'s: two steps of the engine (the loop, the
Adaptation callback, the dann plugin, the optimizer groups and the `dann` schedule)
leave the same weights as two steps of the minimal loop written from the paper
(benchmarks/dann_reference.py), from the same weights and batches."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

import zoo_adapt
from zoo_adapt.adapt.callback import Adaptation
from zoo_adapt.adapt.method import make_method
from zoo_adapt.engine.loop import Loop
from zoo_adapt.engine.tasks import SingleLabel
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.model.optim import make_optimizer, param_groups
from zoo_adapt.model.recipes import stage_schedule

from helpers import ROOT, FixedBatches

sys.path.insert(0, str(ROOT / "benchmarks"))
import dann_reference as reference  # noqa: E402

STEPS, SEED = 2, 3


def test_two_engine_steps_equal_two_steps_of_the_minimal_loop():
    torch.manual_seed(0)
    model = zoo_adapt.create_model("resnet18", num_classes=3, pretrained=False)
    source = [(torch.randn(6, 3, 32, 32), torch.randint(0, 3, (6,))) for _ in range(STEPS)]
    target = [(torch.randn(6, 3, 32, 32) + 1, torch.full((6,), -1)) for _ in range(STEPS)]
    recipe = reference.Recipe(lr_body=1e-3, lr_head=3e-3, weight_decay=0.0)

    # the engine, configured as the paper: one body rate, the discriminator at the head's
    ours = copy.deepcopy(model)
    config = FinetuneConfig(target_data="t", adapt_options={"width": 256, "depth": 2, "dropout": 0.5, "lr_factor": 1.0})
    method = make_method("dann", 512, 3, config)
    groups = method.param_groups(recipe.lr_head, 0.0) + param_groups(
        ours, recipe.lr_head, lr_body=recipe.lr_body, spread="flat", weight_decay=0.0
    )
    loop = Loop(
        ours,
        train=FixedBatches(source),
        val=None,
        classes=["a", "b", "c"],
        plan=[0],
        optimizer=make_optimizer(groups),
        schedule=stage_schedule([0], STEPS, "dann", warmup=0.0),
        callbacks=[Adaptation(method, FixedBatches(target))],
        task=SingleLabel(0.0),
        seed=SEED,
    )
    discriminator = copy.deepcopy(method.domain_classifier)
    loop.fit()

    # the minimal loop, from the same weights, batches and dropout draws
    theirs = reference.Split(copy.deepcopy(model), "fc").train()
    discriminator.train()
    opt, lrs = reference.optimizer_for(theirs, discriminator, recipe)
    torch.manual_seed(SEED * 1000)  # what the loop seeds each epoch with
    for step, ((xs, ys), (xt, _)) in enumerate(zip(source, target)):
        reference.dann_step(theirs, discriminator, opt, lrs, xs, ys, xt, step / STEPS, recipe.gamma)
    mine = dict(ours.named_parameters())
    for name, p in theirs.body.named_parameters():
        assert torch.allclose(mine[name], p, atol=1e-6, rtol=1e-5), name
    assert torch.allclose(mine["fc.weight"], theirs.head.weight, atol=1e-6)
    for a, b in zip(method.domain_classifier.parameters(), discriminator.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    buffers = dict(ours.named_buffers())  # BatchNorm statistics of the mixed batches
    for name, b in theirs.body.named_buffers():
        assert torch.allclose(buffers[name].float(), b.float(), atol=1e-6), name


def test_target_data_trains_the_body_at_one_rate_as_the_paper():
    plain, adapting = FinetuneConfig(lr=1e-2, lr_body=1e-3), FinetuneConfig(lr=1e-2, lr_body=1e-3, target_data="t")
    assert (plain.lr_spread, adapting.lr_spread) == ("geometric", "flat")
    model = zoo_adapt.create_model("resnet18", num_classes=3, pretrained=False)
    rates = {g["lr"] for g in param_groups(model, 1e-2, lr_body=1e-3, spread=adapting.lr_spread)}
    assert rates == {1e-3, 1e-2}
    assert len({g["lr"] for g in param_groups(model, 1e-2, lr_body=1e-3, spread=plain.lr_spread)}) > 2


def test_target_data_defaults_are_the_papers_recipe_and_given_values_win():
    recipe = ("warmup", "label_smoothing", "hflip", "crop_scale")
    adapting = FinetuneConfig(target_data="t")
    assert [getattr(adapting, k) for k in recipe] == [0.0, 0.0, False, 1.0]
    assert [getattr(FinetuneConfig(), k) for k in recipe] == [0.1, 0.1, True, 0.35]
    given = FinetuneConfig(target_data="t", warmup=0.2, label_smoothing=0.1, hflip=True, crop_scale=0.5)
    assert [getattr(given, k) for k in recipe] == [0.2, 0.1, True, 0.5]
    # issue 11's rates (the minimal loop's), and target BatchNorm statistics, which plain runs do not have
    assert (adapting.head_lr, adapting.lr_body, adapting.target_bn) == (3e-3, 1e-3, "target")
    assert FinetuneConfig(target_data="t", lr=1e-2).lr_body == pytest.approx(1e-2 / 3)
    assert FinetuneConfig().target_bn is None
