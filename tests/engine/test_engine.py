"""The engine's pieces: epoch orders and shards, batches that drop no image, crops drawn
on the device, exact eval crops held on the device, the feature cache, a loop that
never waits for the device inside a step, and a wrapped (compiled) network."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import zoo_adapt
from zoo_adapt import Callback, Loop
from zoo_adapt.data.device_images import DeviceEvalImages, DeviceImages, crop_resize, random_crop_boxes
from zoo_adapt.data.feature_cache import FeatureBatches, extract_features
from zoo_adapt.data.folders import ImageDataset, scan_folder
from zoo_adapt.data.pipeline import EpochOrder, LoaderBatches, batch_sizes
from zoo_adapt.data.transforms import EvalTransform
from zoo_adapt.engine.tasks import SingleLabel
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune
from zoo_adapt.model.optim import make_optimizer, param_groups
from zoo_adapt.model.recipes import stage_schedule
from zoo_adapt.ship.export import read_card

from helpers import CLASSES, forbid_device_reads_in_steps, small


def config(tmp_path, demo, **kw) -> FinetuneConfig:
    return small(tmp_path, demo, **{"epochs": 2, **kw})


@pytest.mark.parametrize("n, world", [(10, 1), (10, 3), (7, 2), (1, 1)])
def test_epoch_orders_shard_the_data_exactly(n, world):
    for epoch in (0, 1):
        evals = [EpochOrder(n, shuffle=True, seed=3, rank=r, world=world) for r in range(world)]
        for o in evals:
            o.set_epoch(epoch)
        shards = [o.indices() for o in evals]
        assert sorted(i for s in shards for i in s) == list(range(n))  # every sample once, no padding
        trains = [EpochOrder(n, shuffle=True, seed=3, rank=r, world=world, pad=True) for r in range(world)]
        for o in trains:
            o.set_epoch(epoch)
        lengths = {len(o.indices()) for o in trains}
        assert lengths == {math.ceil(n / world)} == {len(o) for o in trains}  # same number of steps everywhere
    a, b = EpochOrder(50, shuffle=True, seed=1), EpochOrder(50, shuffle=True, seed=1)
    b.set_epoch(1)
    assert a.indices() != b.indices() and sorted(a.indices()) == sorted(b.indices())
    assert a.indices() == EpochOrder(50, shuffle=True, seed=1).indices()  # reproducible from the seed


@pytest.mark.parametrize("n, size", [(85, 32), (65, 32), (64, 32), (5, 32), (33, 32), (2, 1)])
def test_batches_keep_every_image_and_never_make_a_batch_of_one(n, size):
    sizes = batch_sizes(n, size)
    assert sum(sizes) == n
    assert all(s <= size + 1 for s in sizes)
    assert 1 not in sizes or n == 1 or size == 1


def test_device_crops_follow_random_resized_crop():
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([[100, 133], [120, 90], [64, 64]] * 50)
    boxes = random_crop_boxes(sizes, (0.35, 1.0), g)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= sizes[:, 0]).all() and (left + w <= sizes[:, 1]).all()
    area = h * w / (sizes[:, 0] * sizes[:, 1])
    assert area.min() >= 0.34 and area.max() <= 1.0
    assert ((w / h) >= 0.74).all() and ((w / h) <= 1.34).all()
    assert len(set(map(tuple, boxes.tolist()))) > 100  # random


def test_device_crop_of_the_whole_image_is_the_image_and_flip_mirrors_it():
    canvas = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    box = torch.tensor([[0, 0, 16, 16], [0, 0, 16, 16]]).float()
    out = crop_resize(canvas, box, 16, torch.tensor([False, True]))
    assert torch.allclose(out[0], canvas[0].float(), atol=1e-3)
    assert torch.allclose(out[1], canvas[1].float().flip(-1), atol=1e-3)


def test_images_held_on_the_device_give_exact_eval_crops_and_random_training_crops(demo):
    samples = scan_folder(demo / "val")
    dataset = ImageDataset(samples)
    norm = zoo_adapt.describe("resnet18").normalization
    held = DeviceEvalImages(
        dataset,
        norm=norm.at(40),
        device=torch.device("cpu"),
        batch_size=4,
        order=EpochOrder(len(dataset), shuffle=False),
    )
    loaded = LoaderBatches(
        dataset.with_transform(EvalTransform(norm.at(40))),
        batch_size=4,
        norm=norm,
        device=torch.device("cpu"),
        order=EpochOrder(len(dataset), shuffle=False),
        workers=0,
    )
    for (xa, ya), (xb, yb) in zip(held, loaded):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    train = DeviceImages(
        dataset,
        norm=norm.at(40),
        device=torch.device("cpu"),
        batch_size=5,
        order=EpochOrder(len(dataset), shuffle=True),
        min_scale=0.35,
        hflip=True,
    )
    train.set_epoch(0)
    first = [x for x, _ in train]
    train.set_epoch(0)
    again = [x for x, _ in train]
    train.set_epoch(1)
    other = [x for x, _ in train]
    assert first[0].shape == (5, 3, 40, 40) and sum(len(x) for x in first) == len(dataset)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # an epoch replays exactly
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("on_device", ["on", "off"])
def test_both_data_paths_train_and_count_every_image(tmp_path, demo, on_device):
    seen = []

    class Count(Callback):
        def epoch_end(self, loop, record, improved):
            seen.append(loop.seen)

    result = finetune(config(tmp_path, demo, data_on_device=on_device, batch_size=8), callbacks=[Count()], log=None)
    assert seen == [30, 30]  # 30 training images at batch 8: 8, 8, 8, 6 - none dropped
    assert result.metrics["num_train"] == 30 and result.metrics["num_val"] == 20


def _probe_loop(model, train, val, seed=0):
    plan = [len(zoo_adapt.group_parameters(model)) - 1] * 3
    optimizer = make_optimizer(param_groups(model, 1e-2, weight_decay=0.01))
    return Loop(
        model,
        train=train,
        val=val,
        classes=list(CLASSES),
        plan=plan,
        optimizer=optimizer,
        schedule=stage_schedule(plan, len(train), "onecycle", 0.1),
        task=SingleLabel(0.1),
        bn="frozen",
        eval_body=True,
        seed=seed,
    )


def test_a_probe_on_cached_features_equals_the_probe_on_images(demo):
    """Without augmentation the cache is exact: the same head, step for step."""
    dataset = ImageDataset(scan_folder(demo / "train"))
    norm = zoo_adapt.describe("resnet18").normalization
    device = torch.device("cpu")

    def model():
        torch.manual_seed(0)
        return zoo_adapt.create_model("resnet18", num_classes=5, pretrained=False)

    images = LoaderBatches(
        dataset.with_transform(EvalTransform(norm.at(32))),
        batch_size=8,
        norm=norm,
        device=device,
        order=EpochOrder(len(dataset), shuffle=True, seed=4),
        workers=0,
    )
    plain = model()
    _probe_loop(plain, images, None).fit()
    cached = model()
    in_order = LoaderBatches(
        dataset.with_transform(EvalTransform(norm.at(32))),
        batch_size=8,
        norm=norm,
        device=device,
        order=EpochOrder(len(dataset), shuffle=False),
        workers=0,
    )
    features, labels = extract_features(cached, in_order)
    batches = FeatureBatches(features, labels, batch_size=8, order=EpochOrder(len(dataset), shuffle=True, seed=4))
    loop = _probe_loop(cached, batches, None)
    loop.network = cached.fc
    loop.fit()
    assert torch.allclose(plain.fc.weight, cached.fc.weight, atol=1e-5)
    body = [n for n in plain.state_dict() if not n.startswith("fc.")]
    assert all(torch.equal(plain.state_dict()[n], cached.state_dict()[n]) for n in body)  # frozen, BN too


def test_feature_cache_matches_the_uncached_probe_within_noise_and_later_epochs_are_cheap(tmp_path, demo):
    cached_runs, plain_runs = BodyRuns(), BodyRuns()
    cached = finetune(
        config(tmp_path, demo, strategy="linear-probe", epochs=6, out=str(tmp_path / "c"), image_size=48, lr=1e-2),
        callbacks=[cached_runs],
        log=None,
    )
    plain = finetune(
        config(
            tmp_path,
            demo,
            strategy="linear-probe",
            epochs=6,
            out=str(tmp_path / "p"),
            image_size=48,
            lr=1e-2,
            feature_cache=False,
        ),
        callbacks=[plain_runs],
        log=None,
    )
    assert abs(cached.metrics["val_accuracy"] - plain.metrics["val_accuracy"]) <= 0.2
    # what makes later epochs cheap, counted rather than timed: the body never runs in a training step
    assert cached_runs.in_steps == 0 and plain_runs.in_steps >= 6


class BodyRuns(Callback):
    """Counts forward passes of the whole described model (body and head) inside training steps."""

    def __init__(self):
        self.in_steps, self._stepping = 0, False

    def setup(self, loop):
        def count(module, args):
            self.in_steps += self._stepping

        loop.model.register_forward_pre_hook(count)

    def before_forward(self, loop, step):
        self._stepping = True

    def step_end(self, loop, step):
        self._stepping = False


def test_loop_steps_never_wait_for_the_device(tmp_path, demo, monkeypatch):
    """No .item(), .tolist() or truth test of a tensor inside a training step (the
    optimizer reading its own step counter, a CPU tensor even on CUDA, is no wait)."""
    forbid_device_reads_in_steps(monkeypatch)
    finetune(config(tmp_path, demo, strategy="finetune", epochs=1), log=None)


def test_a_non_finite_loss_stops_the_run_with_one_message(tmp_path, demo):
    with pytest.raises(zoo_adapt.ZooAdaptError, match="non-finite"):
        finetune(config(tmp_path, demo, strategy="finetune", lr=1e12, optimizer="sgd", epochs=2), log=None)


class Prefixed(nn.Module):
    """Wraps a model the way torch.compile does: parameter names gain `_orig_mod.`."""

    def __init__(self, model):
        super().__init__()
        self._orig_mod = model

    def forward(self, x):
        return self._orig_mod(x)


class WrapNetwork(Callback):
    order = -10

    def setup(self, loop):
        loop.network = loop.eval_network = Prefixed(loop.network)
        assert next(iter(dict(loop.network.named_parameters()))).startswith("_orig_mod.")


@pytest.mark.parametrize("strategy", ["two-stage", "gradual"])
def test_a_wrapped_network_keeps_groups_freezing_and_export(tmp_path, demo, strategy):
    result = finetune(config(tmp_path, demo, strategy=strategy, epochs=3), callbacks=[WrapNetwork()], log=None)
    assert [r["frozen_to"] for r in result.history][:2] == [5, 0 if strategy == "two-stage" else 4]
    card, _ = read_card(result.out / "model.safetensors")
    state = torch.load(result.out / "checkpoint.pt", weights_only=True)["model"]
    assert not any(k.startswith("_orig_mod") for k in state)
    import torchvision
    from safetensors.torch import load_file

    torchvision.models.resnet18(num_classes=5).load_state_dict(load_file(result.out / "model.safetensors"))


@pytest.mark.slow
def test_torch_compile_trains_and_exports_the_plain_model(tmp_path, demo):
    """Dynamo's real wrapper (prefixed names, guards, a recompile when layers unfreeze);
    the eager backend skips inductor's C++ build, which takes minutes on a small CPU."""
    from zoo_adapt.engine.callbacks import Compile

    result = finetune(
        config(tmp_path, demo, strategy="two-stage", epochs=2, batch_size=6),  # one batch shape
        callbacks=[Compile(backend="eager")],
        log=None,
    )
    assert "compile_seconds" in result.history[-1]
    assert [r["frozen_to"] for r in result.history] == [5, 0]
    import torchvision
    from safetensors.torch import load_file

    torchvision.models.resnet18(num_classes=5).load_state_dict(load_file(result.out / "model.safetensors"))
