"""Fine-tuning mechanics on small real images: strategies, rates, export, resume, TTA,
and one real transfer test with the pretrained EfficientNet-Lite0."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file
from torch.nn.modules.batchnorm import _BatchNorm

import zoo_adapt
from zoo_adapt.data.demo import build_demo
from zoo_adapt.engine.callbacks import Callback
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune
from zoo_adapt.metrics.evaluation import predict_proba, tta_views
from zoo_adapt.ship.export import load_model, read_card

from helpers import CLASSES, small


class Snapshots(Callback):
    """Which parameters each epoch changed."""

    def __init__(self):
        self.changed: list[set[str]] = []
        self.before: dict[str, torch.Tensor] = {}

    def epoch_start(self, loop, epoch):
        self.before = {n: p.detach().clone() for n, p in loop.model.named_parameters()}

    def epoch_end(self, loop, record, improved):
        self.changed.append({n for n, p in loop.model.named_parameters() if not torch.equal(p, self.before[n])})


class FirstRates(Callback):
    """Each optimizer group's base rate, by layer-group name, at the first epoch."""

    def __init__(self):
        self.rates = {}

    def epoch_start(self, loop, epoch):
        if not self.rates:
            self.rates = {g["name"]: g["initial_lr"] for g in loop.optimizer.param_groups}


# resnet18's layer groups: stem, layer1..layer4, head (5); the first trainable group per epoch
@pytest.mark.parametrize(
    "strategy, extra, plan",
    [
        ("linear-probe", {}, [5, 5, 5]),
        ("finetune", {}, [0, 0, 0]),
        ("two-stage", {"head_epochs": 1}, [5, 0, 0]),
        ("gradual", {"epochs": 4, "unfreeze_every": 1}, [5, 4, 3, 2]),
    ],
)
def test_each_strategy_trains_exactly_its_parameters(tmp_path, demo, strategy, extra, plan):
    snaps = Snapshots()
    result = finetune(small(tmp_path, demo, strategy=strategy, **extra), callbacks=[snaps], log=None)
    groups = zoo_adapt.group_parameters(result.model)
    bn = {
        f"{m}.{p}"
        for m, mod in result.model.named_modules()
        if isinstance(mod, _BatchNorm)
        for p, _ in mod.named_parameters(recurse=False)
    }
    assert len(snaps.changed) == len(plan)
    for epoch, (changed, first) in enumerate(zip(snaps.changed, plan)):
        trainable = {n for i, (_, ps) in enumerate(groups) if i >= first for n, _ in ps}
        # BatchNorm in frozen groups trains too (fastai's train_bn), except in a linear probe
        allowed = trainable if strategy == "linear-probe" else trainable | bn
        assert changed <= allowed, f"epoch {epoch}: frozen parameters changed"
        assert trainable - bn <= changed, f"epoch {epoch}: trainable parameters did not change"
        assert result.history[epoch]["frozen_to"] == first


def test_discriminative_rates_reach_the_optimizer(tmp_path, demo):
    grab = FirstRates()
    finetune(small(tmp_path, demo, strategy="finetune", lr=1e-2, lr_body=1e-4, epochs=1), callbacks=[grab], log=None)
    seen = grab.rates
    names = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    expected = [1e-4 * 100 ** (i / 5) for i in range(6)]
    assert [seen[n] for n in names] == pytest.approx(expected)


def test_layerwise_decay_reaches_the_optimizer(tmp_path, demo):
    grab = FirstRates()
    finetune(small(tmp_path, demo, strategy="finetune", lr=1e-2, lr_decay=0.5, epochs=1), callbacks=[grab], log=None)
    rates = grab.rates
    assert rates["head"] == pytest.approx(1e-2) and rates["layer4"] == pytest.approx(5e-3)
    assert rates["stem"] == pytest.approx(1e-2 * 0.5**5)


@pytest.mark.parametrize("backbone, library", [("resnet18", "torchvision"), ("efficientnet_lite0", "timm")])
def test_export_loads_into_the_plain_upstream_model_with_identical_logits(tmp_path, demo, backbone, library):
    result = finetune(small(tmp_path, demo, backbone=backbone, epochs=1), log=None)
    path = result.out / "model.safetensors"
    card, meta = read_card(path)
    assert card.classes == list(CLASSES) and meta["library"] == library
    assert json.loads(meta["input_size"]) == [3, 32, 32]
    assert json.loads(meta["mean"]) == list(result.model.zoo_adapt.normalization.mean)
    plain = (
        torchvision.models.get_model(backbone, num_classes=5)
        if library == "torchvision"
        else timm.create_model(backbone, num_classes=5)
    )
    plain.load_state_dict(load_file(path), strict=True)
    x = torch.randn(3, 3, 32, 32)
    reloaded, _ = load_model(path)
    with torch.no_grad():
        expected = result.model.cpu().eval()(x)
        assert torch.allclose(plain.eval()(x), expected, atol=1e-5)
        assert torch.allclose(reloaded(x), expected, atol=1e-5)


def test_resume_after_interruption_ends_where_the_uninterrupted_run_ends(tmp_path, demo):
    straight = finetune(small(tmp_path, demo, out=str(tmp_path / "a"), keep="last"), log=None)

    class Interrupt(Callback):
        def step_end(self, loop, step):
            if loop.epoch == 2 and loop.seen > 8:
                raise KeyboardInterrupt

    config = small(tmp_path, demo, out=str(tmp_path / "b"), keep="last")
    with pytest.raises(KeyboardInterrupt):
        finetune(config, callbacks=[Interrupt()], log=None)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert (tmp_path / "b" / "model.safetensors").is_file()  # the work so far is kept
    config.resume = True
    resumed = finetune(config, log=None)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_tta_changes_predictions_only_through_its_averaging():
    torch.manual_seed(0)
    model = zoo_adapt.create_model("resnet18", num_classes=4, pretrained=False).eval()
    x = torch.randn(2, 3, 40, 40)
    views = tta_views(x)
    assert len(views) == 4 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[1], x.flip(-1))
    with torch.no_grad():
        by_hand = torch.stack([model(v).softmax(-1) for v in views]).mean(0)
        plain = model(x).softmax(-1)
    assert torch.allclose(predict_proba(model, x, tta=True), by_hand, atol=1e-6)
    assert torch.allclose(predict_proba(model, x, tta=False), plain, atol=1e-6)

    class Constant(torch.nn.Module):  # a model that ignores its input: TTA changes nothing
        def forward(self, x):
            return torch.tensor([[2.0, 1.0, 0.0]]).expand(len(x), 3)

    assert torch.allclose(predict_proba(Constant(), x, tta=True), predict_proba(Constant(), x))


def test_config_file_supplies_options_and_flags_win(tmp_path, demo, run_cli):
    config = tmp_path / "job.toml"
    config.write_text(
        f'backbone = "resnet18"\ndata = "{demo}"\nepochs = 2\nimage-size = 32\n'
        'pretrained = false\nbatch-size = 8\ntta = false\nstrategy = "finetune"\nanalysis = "off"\n'
    )
    out = tmp_path / "run"
    result = run_cli("finetune", "--config", config, "--epochs", 1, "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["strategy"] == "finetune"  # flag won, file supplied
    written = (out / "config.toml").read_text()
    assert "epochs = 1" in written and 'strategy = "finetune"' in written
    rerun = run_cli("finetune", "--config", out / "config.toml", "--out", tmp_path / "again")
    assert rerun.exit_code == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["val_accuracy"] == metrics["val_accuracy"]  # same seed, same job
    bad = tmp_path / "bad.toml"
    bad.write_text("epoch = 3\n")
    result = run_cli("finetune", "--config", bad)
    assert result.exit_code == 1 and "unknown option 'epoch'" in result.output


def test_finetune_command_writes_every_output(tmp_path, demo, run_cli):
    out = tmp_path / "run"
    result = run_cli(
        "finetune",
        "--backbone",
        "resnet18",
        "--data",
        demo,
        "--out",
        out,
        "--no-pretrained",
        "--image-size",
        32,
        "--epochs",
        2,
        "--batch-size",
        8,
        "--analysis",
        "off",
    )
    assert result.exit_code == 0, result.output
    assert "val_accuracy" in result.output.splitlines()[-1]
    for name in (
        "model.safetensors",
        "metrics.json",
        "curves.png",
        "confusion_matrix.png",
        "config.toml",
        "checkpoint.pt",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_val"] == 20 and metrics["finished"]
    confusion = metrics["confusion_matrix"]  # rows: true class, 4 validation images each
    assert [sum(row) for row in confusion] == [4] * 5
    assert metrics["val_accuracy"] == pytest.approx(sum(confusion[i][i] for i in range(5)) / 20)
    assert len(metrics["history"]) == 2 and metrics["history"][0]["val_top5"] is not None
    assert set(metrics["per_class_accuracy"]) == set(CLASSES)
    assert "val_accuracy_tta" in metrics
    evaluated = json.loads(
        run_cli("evaluate", "--model", out / "model.safetensors", "--data", demo / "val", "--json").output
    )
    assert evaluated["num_images"] == 20
    assert evaluated["accuracy"] == pytest.approx(metrics["val_accuracy"])
    predicted = json.loads(
        run_cli("predict", "--model", out / "model.safetensors", demo / "val" / "moon", "--json", "--top-k", 2).output
    )
    assert len(predicted) == 4 and all(len(p["top"]) == 2 for p in predicted)
    assert all(p["prediction"] in CLASSES for p in predicted)


def test_single_folder_is_split_stratified_and_seeded(tmp_path, demo):
    result = finetune(small(tmp_path, demo / "train", val_split=0.5, epochs=1), log=None)
    assert result.metrics["num_val"] == 15 and result.metrics["num_train"] == 15


def test_linear_probe_on_pretrained_lite0_beats_random_init_by_a_wide_margin(tmp_path):
    """Real transfer: 8 classes, 5 photographs' patches each to learn from."""
    data = build_demo(
        tmp_path / "fewshot",
        train_per_class=5,
        val_per_class=10,
        classes=("astronaut", "brick", "camera", "chelsea", "coffee", "grass", "moon", "rocket"),
    )
    scores = {}
    for pretrained in (True, False):
        config = FinetuneConfig(
            backbone="efficientnet_lite0",
            data=str(data),
            pretrained=pretrained,
            strategy="linear-probe",
            epochs=6,
            image_size=96,
            batch_size=8,
            lr=5e-3,
            workers=0,
            tta=False,
            analysis="off",
            out=str(tmp_path / f"probe-{pretrained}"),
        )
        scores[pretrained] = finetune(config, log=None, overwrite=True).metrics["val_accuracy"]
    assert scores[True] >= 0.7, scores
    assert scores[True] - scores[False] >= 0.3, scores


@pytest.mark.cuda
def test_cuda_bf16_run_exports_a_model_that_reloads_on_cpu(tmp_path, demo):
    result = finetune(small(tmp_path, demo, device="cuda", epochs=1), log=None)
    assert result.metrics["precision"] == "bf16" and result.metrics["device"].startswith("cuda")
    model, card = load_model(result.out / "model.safetensors", "cpu")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = result.model.float().eval()(x.cuda()).cpu()
        # the GPU's fp32 runs TF32 matrix products (prepare_device), about 1e-3 off
        assert torch.allclose(model(x), expected, atol=1e-2 * max(1.0, float(expected.abs().max())))
