"""Optimizers and schedules from timm over zoo-adapt's layer groups: each group keeps its
rate and weight decay, the schedules restart with each stage like zoo-adapt's own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo_adapt.job.config import FinetuneConfig, build_config
from zoo_adapt.model.optim import make_optimizer, param_groups, schedule_shape
from zoo_adapt.model.recipes import OPTIMIZERS, TIMM_SCHEDULES, stage_schedule


def tiny_model() -> nn.Module:
    """timm's test_resnet: a ResNet of 0.4 M parameters, so that 17 optimizers step in seconds."""
    from zoo_adapt.model.build import create_model

    torch.manual_seed(0)
    return create_model("timm/test_resnet", pretrained=False, num_classes=3)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_offered_optimizer_is_timms_over_the_layer_groups(name):
    import timm.optim

    model = tiny_model()
    groups = param_groups(model, 1e-2, lr_body=1e-4, weight_decay=0.05)
    optimizer = make_optimizer(groups, name)
    expected = timm.optim.create_optimizer_v2(param_groups(model, 1e-2, lr_body=1e-4, weight_decay=0.05), name)
    assert type(optimizer) is type(expected)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        (g["name"], g["lr"], g["weight_decay"]) for g in groups
    ]
    head = model.fc.weight.detach().clone()
    for _ in range(2):  # ADOPT's first step only measures the gradient
        optimizer.zero_grad()
        model(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum().backward()
        optimizer.step()
    assert not torch.equal(head, model.fc.weight), "the steps changed nothing"


def test_adamw_and_sgd_are_what_they_were():
    groups = param_groups(tiny_model(), 1e-2)
    assert type(make_optimizer(groups, "adamw")) is torch.optim.AdamW
    sgd = make_optimizer(groups, "sgd", momentum=0.8)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    plain = make_optimizer(groups, "sgd", momentum=0.0)
    assert not plain.defaults["nesterov"] and plain.defaults["momentum"] == 0.0


def test_the_optimizer_option_takes_timms_names_with_their_default_rates():
    assert build_config({"optimizer": "lion"}).head_lr == 2e-4
    assert build_config({"optimizer": "lamb"}).head_lr == 2e-3
    assert FinetuneConfig(optimizer="sgd").head_lr == 2e-2


@pytest.mark.parametrize("schedule", TIMM_SCHEDULES)
def test_timm_schedules_follow_timm_within_a_stage_and_restart_with_each(schedule):
    from timm.scheduler import PolyLRScheduler, StepLRScheduler, TanhLRScheduler

    plan, per_epoch, warmup = [4, 4, 0, 0, 0], 10, 0.1  # a head stage of 20 steps, then 30
    factor = stage_schedule(plan, per_epoch, schedule, warmup, schedule_shape)
    for start, steps in ((0, 20), (20, 30)):
        warm = round(warmup * steps)
        assert [factor(start + i) for i in range(warm)] == pytest.approx([(i + 1) / warm for i in range(warm)])
        stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        if schedule == "step":
            timm_made = StepLRScheduler(stand_in, decay_t=-(-(steps - warm) // 3), decay_rate=0.1, t_in_epochs=False)
        elif schedule == "poly":
            timm_made = PolyLRScheduler(stand_in, t_initial=steps - warm, power=0.5, t_in_epochs=False)
        else:
            timm_made = TanhLRScheduler(stand_in, t_initial=steps - warm, t_in_epochs=False)
        for t in range(steps - warm):
            timm_made.step_update(t)
            assert factor(start + warm + t) == pytest.approx(stand_in.param_groups[0]["lr"]), (start, t)
    assert factor(20) > factor(19)  # the restart when the body unfreezes


def test_a_run_with_lion_and_timms_step_schedule(tmp_path, demo):
    from zoo_adapt import finetune

    from helpers import small

    result = finetune(small(tmp_path, demo, optimizer="lion", schedule="step", epochs=2), log=None)
    assert 0 < result.metrics["history"][-1]["lrs"]["head"] <= 2e-4 * 0.01 * 1.0001  # decayed twice or more
    assert 'optimizer = "lion"' in (tmp_path / "run" / "config.toml").read_text()
