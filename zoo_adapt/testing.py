"""The checks every backbone and every adaptation method must pass, as functions a
plugin calls from its own tests; zoo-adapt's tests run the same checks over its
built-in backbones (tests/test_backbones.py). Each check raises AssertionError saying
what is wrong. `registered` puts a plugin in place for a test, even where an installed
copy of it is loaded too:

    from zoo_adapt.testing import check_backbone, registered
    import my_plugin

    def test_my_backbone(tmp_path):
        with registered(my_plugin, "mine"):  # "mine": the plugin's entry-point name
            check_backbone("my_backbone", tmp_path)
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from zoo_adapt.adapt.method import AdaptationMethod, make_method
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.model.build import create_model, get_submodule, head_of, num_classes_of, set_submodule
from zoo_adapt.model.layers import group_parameters
from zoo_adapt.model.weights import read_state_dict
from zoo_adapt.ship.export import export_model
from zoo_adapt.zoo.answers import describe
from zoo_adapt.zoo.backbone import backbone_of
from zoo_adapt.zoo.plugins import standing_in as registered
from zoo_adapt.zoo.rank_scores import transferability_scores
from zoo_adapt.zoo.routing import ask
from zoo_adapt.zoo.tracker_api import Tracker, TrackerRun
from zoo_adapt.zoo.trackers import build_tracker, check

__all__ = [
    "registered",
    "check_backbone",
    "check_head_swap",
    "check_groups",
    "check_static_facts",
    "check_export",
    "check_adaptation_method",
    "check_tracker",
    "check_transferability_score",
]


def check_backbone(
    name: str,
    tmp_path: str | Path,
    num_classes: int = 3,
    image_size: int = 64,
    upstream: Callable[[int], nn.Module] | None = None,
) -> nn.Module:
    """Every check below on backbone `name`, built with random weights; returns the model."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, pretrained=False)
    check_head_swap(model, num_classes, image_size)
    check_groups(model)
    check_static_facts(model)
    check_export(model, tmp_path, upstream)
    return model


def check_head_swap(model: nn.Module, num_classes: int, image_size: int = 64) -> None:
    """The swapped head gives `num_classes` outputs, and the plugin's head width is right."""
    head = backbone_of(model).built_head
    live = get_submodule(model, head.attr)
    assert isinstance(live, nn.Linear) and live.out_features == num_classes, (
        f"head {head.attr!r} is {live}, not an nn.Linear with {num_classes} outputs"
    )
    assert head.in_features == live.in_features, f"head width {head.in_features} != {live.in_features}"
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, image_size, image_size))
    assert tuple(out.shape) == (2, num_classes), f"output shape {tuple(out.shape)}, not (2, {num_classes})"


def check_groups(model: nn.Module) -> None:
    """The layer groups hold every parameter exactly once, run stem to head in parameter
    order, and the last one holds the head."""
    groups = group_parameters(model)  # raises naming the plugin if a parameter is in 0 or 2 groups
    owner = {n: i for i, (_, params) in enumerate(groups) for n, _ in params}
    names = [n for n, _ in model.named_parameters()]
    assert sorted(owner) == sorted(names), "the groups do not hold exactly the model's parameters"
    order = [owner[n] for n in names]
    late = next((n for n, a, b in zip(names[1:], order, order[1:]) if b < a), None)
    assert late is None, f"groups must run stem to head in parameter order; {late!r} comes back to an earlier group"
    head = backbone_of(model).built_head.attr
    assert all(owner[n] == len(groups) - 1 for n in names if n.startswith(head + ".")), (
        f"the last group ({groups[-1][0]!r}) must hold the head {head!r}"
    )


def check_static_facts(model: nn.Module) -> None:
    """What `zoo-adapt list` says without building (head, number of groups,
    normalization, and the parameters a registry entry declares for the upstream model
    with its 1000-class ImageNet head) agrees with the built model, wherever the plugin
    or the entry says anything."""
    live = backbone_of(model)
    static = describe(live.entry)
    if static.head is not None:
        built = live.built_head
        assert static.head.attr == built.attr, f"static head {static.head.attr!r} != {built.attr!r}"
        assert static.head.in_features in (None, built.in_features), (
            f"static head width {static.head.in_features} != {built.in_features}"
        )
    if static.num_groups is not None:
        assert static.num_groups == live.num_groups, f"static {static.num_groups} groups != {live.num_groups}"
    if static.normalization is not None:
        assert static.normalization == live.normalization, (
            f"static normalization {static.normalization} != {live.normalization}"
        )
    declared = live.entry.extra.get("params")
    if declared is not None:
        linear = head_of(model)
        imagenet_head = linear.in_features * 1000 + (1000 if linear.bias is not None else 0)
        body = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in linear.parameters())
        assert body + imagenet_head == declared, (
            f"the entry declares {declared:,} parameters, the model has "
            f"{body + imagenet_head:,} (with a 1000-class head)"
        )


def check_export(model: nn.Module, tmp_path: str | Path, upstream: Callable[[int], nn.Module] | None = None) -> None:
    """The exported model.safetensors loads strictly into the plain upstream model with N
    classes: `upstream(N)` when given (the zoo's own constructor), else the plugin's
    build_backbone with its original head replaced by an N-way nn.Linear. The file is
    removed afterwards (large backbones write hundreds of megabytes)."""
    live, n = backbone_of(model), num_classes_of(model)
    path = Path(tmp_path) / f"{live.name.replace('/', '_')}.safetensors"
    export_model(model, path, [f"class{i}" for i in range(n)])
    try:
        plain = upstream(n) if upstream else _plain_upstream(live, n)
        plain.load_state_dict(read_state_dict(path), strict=True)
    except RuntimeError as e:
        raise AssertionError(f"the export does not load into the upstream model: {e}") from None
    finally:
        path.unlink(missing_ok=True)


def _plain_upstream(live, num_classes: int) -> nn.Module:
    _, plain = ask(live.entry, "build_backbone", pretrained=False)
    old = get_submodule(plain, live.built_head.attr)
    assert isinstance(old, nn.Linear), f"the head {live.built_head.attr!r} of the plain model is not an nn.Linear"
    set_submodule(plain, live.built_head.attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return plain


def check_adaptation_method(name: str, in_features: int = 16, num_classes: int = 3, batch: int = 4, config: Any = None):
    """Method `name`, with `config`'s adapt_options resolved against the options its
    plugin declared (an undeclared or out-of-range one raises ZooAdaptError), builds,
    gives a finite scalar loss and loggable figures from random features and logits,
    passes gradients back, and its state round-trips; returns it."""
    config = config or FinetuneConfig(adapt=name)
    torch.manual_seed(0)
    method = make_method(name, in_features, num_classes, config)
    inputs = [torch.randn(batch, k, requires_grad=True) for k in (in_features, in_features, num_classes, num_classes)]
    loss, figures = method.loss(inputs[0], inputs[1], inputs[2], inputs[3], 0.5)
    assert isinstance(method, AdaptationMethod)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and torch.isfinite(loss), f"loss {loss!r}"
    assert isinstance(figures, dict) and all(isinstance(v, (int, float, torch.Tensor)) for v in figures.values()), (
        f"figures must be a dict of numbers or tensors, not {figures!r}"
    )
    loss.backward()
    grads = [t.grad for t in [*inputs, *method.parameters()] if t.grad is not None]
    assert any(g.abs().sum() > 0 for g in grads), "the loss passes no gradient to features, logits or the method"
    own = {id(p) for p in method.parameters()}
    for group in method.param_groups(1e-3, 0.01):
        assert all(id(p) in own for p in group["params"]), "param_groups hands out parameters not the method's"
    make_method(name, in_features, num_classes, config).load_state_dict(method.state_dict())
    return method


def check_tracker(name: str, tmp_path: str | Path, resume: bool = True):
    """Tracker `name` is registered with its packages installed, builds, and takes a
    short run as the Tracking callback drives one (start, step, epoch and final
    figures, an image, an artifact, finish); its location is one line or None; its
    state is plain data, and, with
    `resume`, a second tracker started from that state takes the run on. Returns the
    first tracker."""
    out = Path(tmp_path) / "run"
    out.mkdir(parents=True, exist_ok=True)
    (info,) = check([name])
    tracker = build_tracker(info)
    assert isinstance(tracker, Tracker), f"{name}: the factory built {type(tracker).__name__}, not a Tracker"
    picture, artifact = out / "curves.png", out / "metrics.json"
    Image.new("RGB", (32, 24), (200, 30, 30)).save(picture)
    artifact.write_text('{"val_accuracy": 0.5}')
    params = {"backbone": "resnet18", "lr": 0.002, "pretrained": True, "log": name}
    tracker.start(TrackerRun("run", out, out / name, params, epochs=2, classes=("a", "b")))
    where = tracker.location()
    assert where is None or (isinstance(where, str) and "\n" not in where), f"{name}: location() must be one line"
    for step in (1, 2):
        tracker.log_metrics({"step/loss": 1.0 / step, "step/lr/head": 1e-3, "step/lr/stem": 1e-5}, step, "step")
    tracker.log_metrics({"epoch/train_loss": 0.7, "epoch/val_accuracy": 0.5, "epoch/lr/head": 1e-3}, 1, "epoch")
    state = tracker.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == state, f"{name}: state_dict() must be plain data, not {state!r}"
    if resume:
        tracker.finish("interrupted")
        tracker = build_tracker(info)
        tracker.start(
            TrackerRun("run", out, out / name, params, resumed=True, state=state, step=2, epochs=2, classes=("a", "b"))
        )
    tracker.log_metrics({"epoch/train_loss": 0.5, "epoch/val_accuracy": 1.0}, 2, "epoch")
    tracker.log_metrics({"final/val_accuracy": 1.0}, 2, "final")
    tracker.log_image("curves", picture, 2)
    tracker.log_artifact(artifact, "metrics.json")
    tracker.finish("finished")
    return tracker


def check_transferability_score(name: str) -> tuple[float, float]:
    """Score `name` (register_transferability_scores) is registered, takes the arrays
    `zoo-adapt rank` gives it (float32 features, int64 labels; the validation pair None
    unless it needs them) and returns a finite number, higher for features that separate
    the classes than for noise. Returns (separating, noise)."""
    scores = transferability_scores()
    assert name in scores, f"no transferability score {name!r} is registered (found: {', '.join(scores) or 'none'})"
    score = scores[name]
    rng = np.random.default_rng(0)
    labels, val_labels = np.arange(60) % 3, np.arange(30) % 3
    means = 3 * rng.normal(size=(3, 16))

    def features(y: np.ndarray, signal: float) -> np.ndarray:
        return (signal * means[y] + rng.normal(size=(len(y), 16))).astype(np.float32)

    values = []
    for signal in (1.0, 0.0):
        train, val = features(labels, signal), features(val_labels, signal)
        value = score.function(train, labels.astype(np.int64), val, val_labels.astype(np.int64))
        assert isinstance(value, (int, float, np.floating)) and np.isfinite(value), (
            f"{name}: the score must be a finite number, not {value!r}"
        )
        values.append(float(value))
        if not score.needs_validation:
            alone = score.function(train, labels.astype(np.int64), None, None)
            assert np.isfinite(float(alone)), f"{name}: without validation images it gave {alone!r}"
    assert values[0] > values[1], (
        f"{name}: separating features scored {values[0]}, noise {values[1]} (higher is better)"
    )
    return values[0], values[1]
