"""Training recipes: weight EMA (resumed exactly), gradient accumulation (one update of N
micro-batches is one update of the N-times larger batch), early stopping, soft targets,
and the learning-rate finder."""

from __future__ import annotations

import json

import pytest
import tomllib
import torch
import torch.nn.functional as F

import zoo_adapt
from zoo_adapt import Callback, Loop
from zoo_adapt.engine.lr_finder import suggest
from zoo_adapt.engine.tasks import SingleLabel
from zoo_adapt.job.finetune import finetune

from helpers import FixedBatches, small


class Averaged(Callback):
    """The loop's weight average and the model's own weights at the end."""

    def fit_end(self, loop):
        self.average = {k: v.clone() for k, v in loop.runtime.averaged.module.state_dict().items()}
        self.own = {k: v.clone() for k, v in loop.model.state_dict().items()}


def test_ema_is_what_validation_and_export_use_and_resume_continues_it_exactly(tmp_path, demo):
    seen = Averaged()
    straight = finetune(
        small(tmp_path, demo, out=str(tmp_path / "a"), keep="last", ema=0.9, accumulate=2), callbacks=[seen], log=None
    )
    kept = straight.model.state_dict()
    assert all(torch.equal(kept[k], seen.average[k]) for k in kept)  # the export is the average...
    assert not all(torch.equal(kept[k], seen.own[k]) for k in kept)  # ...not the last weights
    assert straight.metrics["accumulate"] == 2 and straight.history[-1]["ema_decay"] > 0

    class Interrupt(Callback):
        def step_end(self, loop, step):
            if loop.epoch == 2 and loop.seen > 8:
                raise KeyboardInterrupt

    config = small(tmp_path, demo, out=str(tmp_path / "b"), keep="last", ema=0.9, accumulate=2)
    with pytest.raises(KeyboardInterrupt):
        finetune(config, callbacks=[Interrupt()], log=None)
    assert "ema" in torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["callbacks"]
    config.resume = True
    resumed = finetune(config, log=None)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_accuracy"] for r in straight.history] == [r["val_accuracy"] for r in resumed.history]


def _one_update(batches, accumulate: int) -> tuple[dict[str, torch.Tensor], int]:
    torch.manual_seed(0)
    model = zoo_adapt.create_model("resnet18", num_classes=3, pretrained=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.0)
    loop = Loop(
        model,
        train=FixedBatches(batches),
        val=None,
        classes=["a", "b", "c"],
        plan=[0],
        optimizer=optimizer,
        schedule=lambda step: 1.0,
        bn="frozen",
        eval_body=True,  # BN statistics fixed
        accumulate=accumulate,
    )
    loop.fit()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, loop.scheduler.last_epoch


def test_one_accumulated_update_equals_one_update_of_the_larger_batch():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g)
    big, big_updates = _one_update([(x, y)], accumulate=1)
    micro, micro_updates = _one_update([(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)], accumulate=4)
    unaccumulated, _ = _one_update([(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)], accumulate=1)
    assert big_updates == micro_updates == 1
    assert all(torch.allclose(big[k], micro[k], atol=1e-6) for k in big)
    assert not all(torch.allclose(big[k], unaccumulated[k], atol=1e-6) for k in big)  # the test can tell


def test_early_stop_ends_the_run_says_why_and_a_resume_does_not_continue_it(tmp_path, demo):
    lines = []
    config = small(tmp_path, demo, epochs=8, early_stop=2, lr=1e-9, strategy="finetune", schedule="constant")
    result = finetune(config, log=lines.append)
    assert len(result.history) == 3  # the score never beats epoch 1: two epochs without improvement
    assert result.metrics["stopped_early"].startswith("early stop after epoch 3 of 8")
    assert any(line.startswith("stopped: early stop") for line in lines)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped_early"]
    config.resume = True
    assert len(finetune(config, log=None).history) == 3


def test_soft_targets_give_the_cross_entropy_of_their_distribution():
    logits = torch.randn(5, 4)
    y = torch.tensor([0, 3, 1, 1, 2])
    task = SingleLabel()
    assert torch.allclose(task.loss(logits, F.one_hot(y, 4).float()), task.loss(logits, y), atol=1e-6)
    soft = torch.softmax(torch.randn(5, 4), -1)
    assert torch.allclose(task.loss(logits, soft), F.cross_entropy(logits, soft), atol=1e-6)
    assert task.accuracy(logits, F.one_hot(y, 4).float()) == task.accuracy(logits, y)


def test_valley_suggestion_sits_on_the_falling_stretch_of_a_curve():
    lrs = [1e-7 * 10 ** (8 * i / 99) for i in range(100)]
    # flat, falls between 1e-4 and 1e-2, then blows up
    losses = [
        2.0
        if lr < 1e-4
        else max(0.2, 2.0 - 0.9 * (torch.tensor(lr / 1e-4).log10().item()))
        if lr < 1e-1
        else 0.2 + (lr - 0.1) * 50
        for lr in lrs
    ]
    valley, steepest = suggest(lrs, losses)
    assert 1e-4 < valley < 1e-2 and 1e-4 < steepest < 1e-2


def test_lr_find_on_pretrained_lite0_suggests_a_sane_rate_and_lr_auto_records_it(tmp_path, demo, run_cli):
    out = tmp_path / "find"
    result = run_cli("lr-find", "--data", demo, "--image-size", 32, "--batch-size", 8, "--workers", 0, "--out", out)
    assert result.exit_code == 0, result.output
    assert "suggested head rate (--lr):" in result.output and (out / "lr_find.png").stat().st_size > 0
    suggested = float(result.output.split("suggested head rate (--lr): ")[1].split()[0])
    assert 1e-5 < suggested < 1.0
    run = tmp_path / "auto"
    result = run_cli(
        "finetune",
        "--data",
        demo,
        "--backbone",
        "resnet18",
        "--no-pretrained",
        "--image-size",
        32,
        "--batch-size",
        8,
        "--workers",
        0,
        "--epochs",
        1,
        "--no-tta",
        "--analysis",
        "off",
        "--lr",
        "auto",
        "--out",
        run,
    )
    assert result.exit_code == 0, result.output
    chosen = float(result.output.split("lr-find: head rate ")[1].split()[0])
    recorded = tomllib.loads((run / "config.toml").read_text())
    assert recorded["lr"] == pytest.approx(chosen, rel=1e-2) and recorded["lr_body"] == pytest.approx(
        recorded["lr"] / 100
    )
    assert (run / "lr_find.png").is_file() and "lr-find: head rate" in result.output


def test_lr_find_leaves_the_model_as_it_was(demo):
    from zoo_adapt.engine.lr_finder import sweep

    torch.manual_seed(0)
    model = zoo_adapt.create_model("resnet18", num_classes=3, pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fc.requires_grad_(False)  # whatever was frozen stays so
    flags = [p.requires_grad for p in model.parameters()]
    g = torch.Generator().manual_seed(2)
    batches = FixedBatches(
        [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(3)]
    )
    curve = sweep(model, model, batches, strategy="two-stage", bn="train", steps=30)
    assert len(curve.lrs) >= 10 and curve.lrs == sorted(curve.lrs)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    assert [p.requires_grad for p in model.parameters()] == flags and model.training


def test_timm_recipes_train_off_the_device_and_repeat_exactly(tmp_path, demo):
    import random

    import numpy as np
    from PIL import Image

    from zoo_adapt.data.augment import image_recipe
    from zoo_adapt.model.build import create_model

    norm = create_model("resnet18", pretrained=False).zoo_adapt.normalization
    recipe = image_recipe("randaugment", 0.4, norm.at(32))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    state = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    views = [np.asarray(recipe(image, random.Random(seed))) for seed in (1, 1, 2)]
    assert (views[0] == views[1]).all() and not (views[0] == views[2]).all()
    assert random.getstate() == state[0] and (np.random.get_state()[1] == state[1]).all()
    assert torch.equal(torch.get_rng_state(), state[2])  # the global generators are left alone

    lines = []
    result = finetune(
        small(
            tmp_path,
            demo,
            epochs=1,
            augment="rand-m7-n2-mstd0.5",
            color_jitter=0.4,
            random_erase=0.5,
            mixup=0.2,
            cutmix=1.0,
            data_on_device="on",
        ),
        log=lines.append,
    )
    assert result.history[0]["train_loss"] > 0 and result.metrics["val_accuracy"] is not None
    assert any("not held on the device" in line for line in lines)
    assert any(line.startswith("recipes: rand-m7-n2-mstd0.5") and "mixup 0.2" in line for line in lines)


def test_an_unknown_augmentation_is_one_line(run_cli, tmp_path, demo):
    result = run_cli(
        "finetune",
        "--data",
        demo,
        "--backbone",
        "resnet18",
        "--no-pretrained",
        "--image-size",
        32,
        "--augment",
        "sharpen-a-lot",
        "--out",
        tmp_path / "x",
    )
    assert result.exit_code == 1 and "--augment 'sharpen-a-lot' is not a recipe timm knows" in result.output
    assert "Traceback" not in result.output
