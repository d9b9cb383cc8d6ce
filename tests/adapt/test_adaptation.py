"""Domain adaptation: the reversal layer, DANN's gradients and schedule, MCC, target
labels never read, exports, the proxy A-distance and pluggable methods."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torchvision
from safetensors.torch import load_file

import zoo_adapt
from zoo_adapt import Callback, ZooAdaptError, hookimpl
from zoo_adapt.adapt.callback import proxy_a_distance
from zoo_adapt.adapt.method import AdaptationMethod, GradientReversal, grad_reverse, make_method
from zoo_adapt.engine.runtime import Runtime
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune
from zoo_adapt.zoo.methods import adaptation_methods

from helpers import ROOT, adapting


def config(tmp_path, digits, **kw) -> FinetuneConfig:
    return adapting(tmp_path, digits, **kw)


def test_gradient_reversal_returns_minus_lambda_times_the_gradient():
    x = torch.randn(4, 6, requires_grad=True)
    incoming = torch.randn(4, 6)
    y = GradientReversal.apply(x, 0.37)
    assert torch.equal(y, x)  # identity forward
    y.backward(incoming)
    assert torch.equal(x.grad, -0.37 * incoming)


def _dann(in_features=16, weight=1.0, dropout=0.0):
    cfg = FinetuneConfig(
        target_data="t", adapt_weight=weight, adapt_options={"width": 8, "depth": 1, "dropout": dropout}
    )
    return make_method("dann", in_features, 3, cfg)


def test_backbone_gets_the_reversed_domain_gradient_and_the_classifier_the_normal_one():
    torch.manual_seed(0)
    dann = _dann()
    fs, ft = torch.randn(5, 16, requires_grad=True), torch.randn(5, 16, requires_grad=True)
    progress = 0.3
    loss, figures = dann.loss(fs, ft, None, None, progress)
    loss.backward()
    lam = dann.coefficient(progress)
    assert figures["lambda"] == pytest.approx(lam)
    reversed_feature_grads = torch.cat([fs.grad, ft.grad])
    classifier_grads = [p.grad.clone() for p in dann.domain_classifier.parameters()]
    # the same loss without the reversal layer: the plain gradients
    features = torch.cat([fs, ft]).detach().requires_grad_(True)
    dann.zero_grad()
    logits = dann.domain_classifier(features).squeeze(-1)
    domains = torch.cat([torch.ones(5), torch.zeros(5)])
    torch.nn.functional.binary_cross_entropy_with_logits(logits, domains).backward()
    assert torch.allclose(reversed_feature_grads, -lam * features.grad, atol=1e-7)
    for got, plain in zip(classifier_grads, dann.domain_classifier.parameters()):
        assert torch.allclose(got, plain.grad, atol=1e-7)


def test_lambda_schedule_at_the_first_and_last_step(tmp_path, digits):
    seen = []

    class Recorder(Callback):
        def step_end(self, loop, step):
            seen.append(step.figures["lambda"])

    finetune(
        config(tmp_path, digits, adapt_weight=0.5, adapt_options={"gamma": 10.0}), log=None, callbacks=[Recorder()]
    )
    total = 2 * 3
    assert len(seen) == total
    assert seen[0] == 0.0  # p = 0 at the first step
    p_last = (total - 1) / total
    assert seen[-1] == pytest.approx(0.5 * (2 / (1 + math.exp(-10 * p_last)) - 1))
    assert seen == sorted(seen)  # rises monotonically


def test_adapt_weight_zero_leaves_the_backbone_gradient_free_of_any_domain_term():
    torch.manual_seed(0)
    model = zoo_adapt.create_model("resnet18", num_classes=3, pretrained=False).eval()
    dann = _dann(in_features=512, weight=0.0, dropout=0.5)
    from zoo_adapt.model.build import HeadFeatures

    features = HeadFeatures(model)
    x, y = torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 0])

    def backbone_grads(with_domain: bool):
        model.zero_grad()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits[:4], y)
        if with_domain:
            extra, figures = dann.loss(features.value[:4], features.value[4:], logits[:4], logits[4:], 0.9)
            assert figures["lambda"] == 0.0 and extra.item() > 0
            loss = loss + extra
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if not n.startswith("fc.")}

    plain, adapted = backbone_grads(False), backbone_grads(True)
    assert all(torch.equal(plain[n], adapted[n]) for n in plain)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dann.parameters())  # it still learns


def test_target_labels_are_never_read(tmp_path, digits):
    target = shutil.copytree(digits / "target" / "train", tmp_path / "target")
    first = finetune(config(tmp_path, digits, target_data=str(target), out=str(tmp_path / "a")), log=None)
    # rename the class folders and shuffle images between them: labels, if read, would change
    folders = sorted(p for p in target.iterdir() if p.is_dir())
    files = sorted(target.rglob("*.png"))
    scrambled = tmp_path / "scrambled"
    for i, f in enumerate(files):
        dest = scrambled / f"bucket{(i * 7) % 3}" / ("deeper" if i % 2 else "") / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    assert len(folders) > 3
    second = finetune(config(tmp_path, digits, target_data=str(scrambled), out=str(tmp_path / "b")), log=None)
    a, b = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["dann", "mcc"])
def test_adapted_run_exports_a_plain_classifier(tmp_path, digits, method, run_cli):
    out = tmp_path / method
    result = run_cli(
        "finetune",
        "--backbone",
        "resnet18",
        "--no-pretrained",
        "--data",
        digits / "source",
        "--target-data",
        digits / "target" / "train",
        "--target-val",
        digits / "target" / "test",
        "--adapt",
        method,
        "--image-size",
        32,
        "--epochs",
        2,
        "--steps-per-epoch",
        3,
        "--batch-size",
        8,
        "--no-hflip",
        "--analysis",
        "off",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "ORACLE" in result.output
    plain = torchvision.models.resnet18(num_classes=10)
    plain.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    if method == "dann":
        beside = load_file(out / "adaptation.safetensors")
        assert beside and all(k.startswith("domain_classifier.") for k in beside)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["proxy_a_distance"]) == {"before", "after"}
    # digits on black against digits on photo textures: a linear classifier tells them apart before training
    assert metrics["proxy_a_distance"]["before"] > 0.5
    assert "target_accuracy_oracle" in metrics and "target labels" in metrics["target_accuracy_oracle_note"]
    epoch = metrics["history"][-1]
    assert "target_accuracy_oracle" in epoch and "val_accuracy" in epoch
    if method == "dann":
        assert {"domain_loss", "domain_accuracy", "lambda"} <= set(epoch)
    else:
        assert "mcc_loss" in epoch
    assert metrics["kept_epoch"] == 2  # the last epoch: selection never uses target labels by default
    assert (out / "adaptation.png").is_file()
    scored = json.loads(
        run_cli("evaluate", "--model", out / "model.safetensors", "--data", digits / "target" / "test", "--json").output
    )
    assert scored["accuracy"] == pytest.approx(metrics["target_accuracy_oracle"])


def test_whole_image_training_is_evaluated_on_whole_images(tmp_path, digits):
    """--target-data trains on whole images (crop scale 1), so the export, validation
    and `evaluate` score whole images too (crop_pct 1), exactly as the minimal loop of
    benchmarks/dann_reference.py does; random resized crops keep the backbone's crop_pct."""
    import sys

    from zoo_adapt.ship.export import load_model, read_card
    from zoo_adapt.ship.inference import evaluate_folder

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import dann_reference as reference

    adapted = finetune(config(tmp_path, digits, epochs=1, target_val=str(digits / "target" / "test")), log=None)
    card, _ = read_card(adapted.out / "model.safetensors")
    assert card.normalization.crop_pct == 1.0
    model, _ = load_model(adapted.out / "model.safetensors", torch.device("cpu"))
    x, y, _ = reference.load_folder(digits / "target" / "test", 32, card.classes)
    with torch.no_grad():
        whole = reference.accuracy(
            reference.Split(model, "fc"), x, y, (card.normalization.mean, card.normalization.std)
        )
    assert evaluate_folder(
        adapted.out / "model.safetensors", digits / "target" / "test", device="cpu"
    ).accuracy == pytest.approx(whole)
    assert adapted.metrics["target_accuracy_oracle"] == pytest.approx(whole)
    cropped = finetune(
        config(tmp_path, digits, target_data=None, steps_per_epoch=None, epochs=1, out=str(tmp_path / "plain")),
        log=None,
    )
    plain_card, _ = read_card(cropped.out / "model.safetensors")
    assert (
        plain_card.normalization.crop_pct
        == zoo_adapt.create_model("resnet18", pretrained=False).zoo_adapt.normalization.crop_pct
        < 1
    )


def test_per_epoch_target_figures_are_of_the_weight_average_with_ema(tmp_path, digits):
    """With --ema, validation and the export use the average: the epoch's label-free
    scores and oracle must describe those weights too, not the raw ones."""
    result = finetune(config(tmp_path, digits, ema=0.5, target_val=str(digits / "target" / "test")), log=None)
    last = result.history[-1]
    assert last["target_accuracy_oracle"] == pytest.approx(result.metrics["target_accuracy_oracle"])


def test_bn_statistics_are_the_target_images_and_no_weight_changes():
    from zoo_adapt.adapt.callback import bn_statistics_kept, estimate_bn_statistics

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Conv2d(4, 2, 1),
        torch.nn.BatchNorm2d(2),
    ).train()
    weights = {k: v.clone() for k, v in model.named_parameters()}
    images = torch.randn(24, 3, 8, 8) * 3 + 2
    batches = [(images[i : i + 8], None) for i in range(0, 24, 8)]
    with bn_statistics_kept(model):
        assert estimate_bn_statistics(model, batches) == 2
        first = model[0](images)
        assert torch.allclose(model[1].running_mean, first.mean((0, 2, 3)), atol=1e-5)
        per_batch = torch.stack([model[0](x).var((0, 2, 3)) for x, _ in batches]).mean(0)
        assert torch.allclose(model[1].running_var, per_batch, rtol=1e-3)
        changed = model[1].running_mean.clone()
    assert not torch.allclose(model[1].running_mean, changed)  # restored after the block
    assert model.training and model[1].momentum == 0.1
    assert all(torch.equal(weights[k], v) for k, v in model.named_parameters())


def test_adabn_trains_as_source_only_and_keeps_target_statistics(tmp_path, digits):
    """--adapt adabn: the weights of source-only training (no target image in any step),
    the BatchNorm statistics of the target images; --target-bn mixed keeps training's."""
    from zoo_adapt.adapt.callback import estimate_bn_statistics
    from zoo_adapt.data.folders import ImageDataset, unlabelled_images
    from zoo_adapt.job.inputs import FeedMaker
    from zoo_adapt.ship.export import load_model

    same = dict(
        strategy="finetune",
        schedule="dann",
        keep="last",
        lr_spread="flat",
        warmup=0.0,
        label_smoothing=0.0,
        crop_scale=1.0,
        steps_per_epoch=None,
        lr=1e-2,
        lr_body=1e-3,
        epochs=1,
    )
    adabn = finetune(config(tmp_path, digits, adapt="adabn", out=str(tmp_path / "adabn"), **same), log=None)
    source = finetune(config(tmp_path, digits, target_data=None, out=str(tmp_path / "source"), **same), log=None)
    a, b = adabn.model.state_dict(), source.model.state_dict()
    params = {k for k, _ in adabn.model.named_parameters()}
    assert all(torch.equal(a[k], b[k]) for k in params)
    stats = [k for k in a if k.endswith("running_mean")]
    assert stats and all(not torch.allclose(a[k], b[k]) for k in stats)

    def on_target(path):  # the export's BatchNorm statistics measured again on the target images
        model, card = load_model(path, torch.device("cpu"))
        maker = FeedMaker(config(tmp_path, digits), card.normalization, Runtime(torch.device("cpu")))
        target = ImageDataset(unlabelled_images(digits / "target" / "train"))
        estimate_bn_statistics(model, maker.evaluation(target, False, shuffle=True))
        return model.state_dict()

    assert all(torch.allclose(on_target(adabn.out / "model.safetensors")[k], a[k], atol=1e-5) for k in stats)
    assert adabn.metrics["adaptation"]["target_bn"] == "target"
    mixed = finetune(config(tmp_path, digits, target_bn="mixed", out=str(tmp_path / "mixed")), log=None)
    assert mixed.metrics["adaptation"]["target_bn"] == "mixed"
    kept = mixed.model.state_dict()
    assert not all(torch.allclose(on_target(mixed.out / "model.safetensors")[k], kept[k], atol=1e-5) for k in stats)
    said = []
    finetune(
        config(tmp_path, digits, adapt="adabn", target_bn="mixed", epochs=1, out=str(tmp_path / "plain")),
        log=said.append,
    )
    assert any("this run is source-only training" in line for line in said)


def test_target_folder_errors(tmp_path, digits):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ZooAdaptError, match="target folder .* holds no images"):
        finetune(config(tmp_path, digits, target_data=str(empty)), log=None)
    with pytest.raises(ZooAdaptError, match="target folder not found"):
        finetune(config(tmp_path, digits, target_data=str(tmp_path / "nope")), log=None, overwrite=True)
    broken = shutil.copytree(digits / "target" / "train", tmp_path / "broken")
    (broken / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ZooAdaptError, match="cannot read image .*junk.png"):
        finetune(config(tmp_path, digits, target_data=str(broken)), log=None, overwrite=True)
    with pytest.raises(ZooAdaptError, match="needs --target-val"):
        config(tmp_path, digits, select_with_target_labels=True).validate()
    with pytest.raises(ZooAdaptError, match="needs --target-data"):
        FinetuneConfig(target_val="x").validate()
    with pytest.raises(ZooAdaptError, match="--target-bn needs --target-data"):
        FinetuneConfig(target_bn="target").validate()


def test_mcc_penalises_confusion_between_classes():
    mcc = make_method("mcc", 8, 4, FinetuneConfig(target_data="t", adapt_options={"temperature": 1.0}))
    confident = torch.eye(4) * 50
    loss, _ = mcc.loss(None, None, None, confident, 0.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(6, 4)
    loss, _ = mcc.loss(None, None, None, uniform, 0.0)
    assert loss.item() == pytest.approx(3 / 4)


def test_proxy_a_distance_measures_separability():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 10, generator=g), torch.randn(300, 10, generator=g)
    assert proxy_a_distance(a, b) < 0.4
    assert proxy_a_distance(a, b + 5) == pytest.approx(2.0)


class ZeroMethod:
    """A third-party method: a learnable scale that contributes nothing but its figure."""

    @hookimpl
    def register_adaptation_methods(self, register):
        register("null", self.build, "does nothing, for testing")

    @staticmethod
    def build(in_features, num_classes, config):
        class Null(AdaptationMethod):
            def __init__(self):
                super().__init__(in_features, num_classes, config)
                self.scale = torch.nn.Parameter(torch.ones(1))

            def loss(self, fs, ft, ls, lt, progress):
                return 0 * self.scale.sum() * ft.sum(), {"progress": progress}

        return Null()


def test_third_party_method_is_listed_and_used(tmp_path, digits, plugin, run_cli):
    plugin(ZeroMethod(), "nullmethod")
    listed = {m["name"]: m for m in json.loads(run_cli("methods", "--json").output)}
    assert listed["null"]["plugin"] == "nullmethod" and {"dann", "mcc"} <= set(listed)
    result = finetune(config(tmp_path, digits, adapt="null"), log=None)
    assert "progress" in result.history[-1]
    with pytest.raises(ZooAdaptError, match="unknown adaptation method 'nope'"):
        finetune(config(tmp_path, digits, adapt="nope", out=str(tmp_path / "x")), log=None)


def test_builtin_methods_come_from_a_plugin():
    methods = adaptation_methods()
    assert methods["dann"].plugin == "adaptation" and methods["mcc"].plugin == "adaptation"
    assert isinstance(_dann(), AdaptationMethod)
    assert grad_reverse(torch.ones(2), 1.0).tolist() == [1.0, 1.0]
