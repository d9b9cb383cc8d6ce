"""Fine-tuning on CUDA: images decoded by loader workers and images held on the device,
in bf16 (or fp16 where the GPU lacks bf16) and fp16 with loss scaling, in channels_last;
EMA with gradient accumulation; the linear probe's feature cache. No training
step waits for the GPU (NoHostSync)."""

from __future__ import annotations

import math

import pytest
import torch
from tier import CUDA, DEVICE, FP16, auto_precision, run_config

from zoo_adapt import Callback
from zoo_adapt.job.finetune import finetune
from zoo_adapt.ship.export import load_model

pytestmark = pytest.mark.cuda


class Watch(Callback):
    """What the steps saw: whether each batch and the first convolution's weights were
    channels_last (metadata, no device read), optimizer updates per epoch, and the first
    convolution's weights at the start and the end (the body of a linear probe must not
    move; every other run must)."""

    def __init__(self):
        self.batches_channels_last: list[bool] = []
        self.updates: list[int] = []

    def setup(self, loop):
        self.start = loop.model.conv1.weight.detach().clone()
        self.weights_channels_last = loop.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)

    def epoch_start(self, loop, epoch):
        self.updates.append(0)

    def before_forward(self, loop, step):
        self.batches_channels_last.append(step.x.is_contiguous(memory_format=torch.channels_last))

    def step_end(self, loop, step):
        self.updates[-1] += step.update

    def fit_end(self, loop):
        self.end = loop.model.conv1.weight.detach().clone()
        self.kept = {k: v.detach().float().cpu().clone() for k, v in loop.kept_weights().items()}
        self.own = {k: v.detach().float().cpu().clone() for k, v in loop.model.state_dict().items()}

    @property
    def moved(self) -> bool:
        return not torch.equal(self.start, self.end)


@pytest.mark.parametrize("held", ["off", "on"])
@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_both_feeds_train_in_each_precision_channels_last_without_waiting(
    tmp_path, shapes, no_host_sync, held, precision
):
    callbacks, guard = no_host_sync
    watch, lines = Watch(), []
    asked = precision if precision == "auto" else FP16
    config = run_config(tmp_path, shapes, data_on_device=held, precision=asked)
    result = finetune(config, callbacks=[*callbacks, watch], log=lines.append)
    m = result.metrics
    expected = auto_precision() if precision == "auto" else FP16
    assert m["precision"] == expected and m["device"].startswith(DEVICE)
    feed = "images held on the device" if held == "on" else "images decoded by"
    assert any(feed in line for line in lines), lines[:3]
    assert m["num_train"] == 120 and watch.updates == [8, 8] and watch.moved
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in result.history)
    if expected == "fp16":  # the loss scaler ran: its skips are counted, and steps were taken (watch.moved)
        assert 0 <= m["skipped_steps"] < 16 and result.history[-1]["skipped_steps"] == m["skipped_steps"]
    else:
        assert "skipped_steps" not in m
    if CUDA:
        assert watch.weights_channels_last and all(watch.batches_channels_last)
        assert guard.guarded >= 4  # steps 3 to 7 of the second epoch ran with sync detection on


def test_ema_with_accumulation_steps_once_a_group_and_exports_the_average(tmp_path, shapes, no_host_sync):
    callbacks, guard = no_host_sync
    watch = Watch()
    config = run_config(tmp_path, shapes, ema=0.9, accumulate=3, batch_size=8, keep="last")
    result = finetune(config, callbacks=[*callbacks, watch], log=None)
    assert watch.updates == [5, 5]  # 15 batches of 8 an epoch, one update every 3
    assert result.metrics["accumulate"] == 3 and 0 < result.history[-1]["ema_decay"] <= 0.9
    exported, _ = load_model(result.out / "model.safetensors", "cpu")
    for name, value in exported.state_dict().items():
        assert torch.allclose(value.float(), watch.kept[name], atol=1e-6), name  # the average was exported...
    assert any(not torch.equal(watch.kept[k], watch.own[k]) for k in watch.kept)  # ...not the model's own weights
    if CUDA:
        assert guard.guarded >= 10


def test_a_linear_probe_trains_its_head_on_features_cached_on_the_device(tmp_path, shapes, no_host_sync):
    callbacks, guard = no_host_sync
    watch, lines = Watch(), []
    config = run_config(tmp_path, shapes, strategy="linear-probe", epochs=3, lr=1e-2)
    result = finetune(config, callbacks=[*callbacks, watch], log=lines.append)
    assert any("cached features" in line for line in lines), lines[:3]
    assert not watch.moved  # the body is frozen: only the head trained
    head = [r["train_loss"] for r in result.history]
    assert all(math.isfinite(v) for v in head) and head[-1] < head[0]
    if CUDA:
        assert guard.guarded >= 8
