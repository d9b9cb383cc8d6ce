"""Error analysis of a classifier on labelled images: per-class precision, recall, F1
and support; the most confused pairs; a gallery of the top losses (as fastai's
`plot_top_losses`); and class activation maps (Grad-CAM, from the `grad-cam` package)
showing where the model looked for its prediction and for the true class.

Written to a folder (the run's `analysis/`): per_class.csv, analysis.json,
top_losses.png, cams.png. `zoo-adapt analyse` and the end of `zoo-adapt finetune` both
come here. The CAM layer is the plugin's answer to `backbone_cam_target` (ViTs: the last
block's first norm, tokens laid out on the patch grid), else the last layer whose output
is a spatial feature map (CNNs)."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo_adapt.data.folders import ImageDataset, labelled_folder, scan_folder
from zoo_adapt.data.pipeline import default_workers, eval_batches
from zoo_adapt.data.transforms import EvalTransform, normalize
from zoo_adapt.engine.device import prepare_device, resolve_device
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.files import write_text
from zoo_adapt.metrics.evaluation import predict_proba
from zoo_adapt.metrics.scores import class_figures, macro_f1
from zoo_adapt.report import pyplot, save_figure
from zoo_adapt.ship.export import load_model, read_card
from zoo_adapt.zoo.backbone import CamTarget, Normalization, backbone_of
from zoo_adapt.zoo.routing import ask

CAM_INSTALL = 'pip install "zoo-adapt[analysis]"'
FILES = ("per_class.csv", "analysis.json", "top_losses.png", "cams.png")


def cams_available() -> bool:
    return importlib.util.find_spec("pytorch_grad_cam") is not None


def require_cams() -> None:
    if not cams_available():
        raise ZooAdaptError(f"class activation maps need the package 'grad-cam', which is not installed: {CAM_INSTALL}")


@dataclass
class ClassFigures:
    name: str
    precision: float | None
    recall: float | None
    f1: float | None
    support: int


@dataclass
class Analysis:
    num_images: int
    accuracy: float
    macro_f1: float | None
    per_class: list[ClassFigures]
    confused: list[dict[str, Any]]  # {"true", "predicted", "count"}, most first
    top_losses: list[
        dict[str, Any]
    ]  # {"index", "path", "true", "predicted", "probability", "true_probability", "loss"}
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def per_class_figures(confusion: np.ndarray, classes: list[str]) -> list[ClassFigures]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows:
    true class, columns: predicted), as the run's metrics compute them
    (`scores.class_figures`: a class never predicted has F1 0)."""
    out = []
    for k, name in enumerate(classes):
        support = int(confusion[k].sum())
        figures = class_figures(int(confusion[k, k]), support, int(confusion[:, k].sum()))
        out.append(ClassFigures(name, *figures, support))
    return out


def most_confused(confusion: np.ndarray, classes: list[str], limit: int = 10) -> list[dict[str, Any]]:
    """Off-diagonal cells, largest first (as fastai's most_confused)."""
    pairs = [
        (int(confusion[i, j]), classes[i], classes[j])
        for i in range(len(classes))
        for j in range(len(classes))
        if i != j and confusion[i, j] > 0
    ]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return [{"true": t, "predicted": p, "count": n} for n, t, p in pairs[:limit]]


def analyse(
    model: nn.Module,
    dataset,
    classes: list[str],
    norm: Normalization,
    out: str | Path,
    device: torch.device | str = "cpu",
    cams: str = "auto",
    top: int = 12,
    num_cams: int = 6,
    batch_size: int = 64,
    workers: int = 0,
    title: str = "",
    log: Callable[[str], None] | None = None,
) -> Analysis:
    """Analyse `model` on `dataset` (labelled images: a zoo-adapt ImageDataset or a
    torchvision dataset wrapper, with `raw(i)`), writing the files to `out`. `cams`:
    auto (when grad-cam is installed) | on | off."""

    if cams == "on":
        require_cams()
    device = torch.device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    transform = EvalTransform(norm)
    batches = eval_batches(dataset, norm, device, batch_size=batch_size, workers=workers)
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"labels": [], "predicted": [], "p_pred": [], "p_true": []}
    for x, y in batches:
        probs = predict_proba(model, x, autocast=device.type == "cuda")
        y = y.to(probs.device)
        top1 = probs.max(-1)
        parts["labels"].append(y.cpu())
        parts["predicted"].append(top1.indices.cpu())
        parts["p_pred"].append(top1.values.cpu())
        parts["p_true"].append(probs.gather(1, y[:, None])[:, 0].cpu())
    if not parts["labels"]:
        raise ZooAdaptError("nothing to analyse: no images")
    labels, predicted, p_pred, p_true = (
        torch.cat(parts[k]).numpy() for k in ("labels", "predicted", "p_pred", "p_true")
    )
    n = len(classes)
    confusion = np.bincount(labels * n + predicted, minlength=n * n).reshape(n, n)
    figures = per_class_figures(confusion, classes)
    losses = -np.log(np.clip(p_true, 1e-12, None))
    order = np.argsort(-losses, kind="stable")[:top]
    paths = _paths(dataset)
    result = Analysis(
        num_images=len(labels),
        accuracy=float(np.mean(labels == predicted)),
        macro_f1=macro_f1([c.f1 for c in figures]),
        per_class=figures,
        confused=most_confused(confusion, classes),
        top_losses=[
            {
                "index": int(i),
                "path": paths[i] if paths else None,
                "true": classes[labels[i]],
                "predicted": classes[predicted[i]],
                "probability": float(p_pred[i]),
                "true_probability": float(p_true[i]),
                "loss": float(losses[i]),
            }
            for i in order
        ],
    )
    write_text(out / "per_class.csv", _per_class_csv(figures))
    result.files.append("per_class.csv")
    crops = {int(i): transform(dataset.raw(int(i), mode=transform.image_mode)[0]) for i in order}
    save_figure(_plot_top_losses(result.top_losses, crops, title), out / "top_losses.png", tight=False)
    result.files.append("top_losses.png")
    if cams == "off":
        result.notes.append("class activation maps: off")
    elif not cams_available():
        result.notes.append(f"class activation maps skipped: grad-cam is not installed ({CAM_INSTALL})")
    else:
        chosen = _cam_images(labels, predicted, p_pred, losses, num_cams)
        for i in chosen:
            crops.setdefault(i, transform(dataset.raw(i, mode=transform.image_mode)[0]))
        written, note = _cams(
            model,
            [crops[i] for i in chosen],
            [int(predicted[i]) for i in chosen],
            [int(labels[i]) for i in chosen],
            [float(p_pred[i]) for i in chosen],
            classes,
            norm,
            device,
            out / "cams.png",
            title,
        )
        if note:
            result.notes.append(note)
        if written:
            result.files.append("cams.png")
    write_text(out / "analysis.json", json.dumps(result.to_dict(), indent=2))
    result.files.append("analysis.json")
    if log:
        log(summary(result, out))
    return result


def summary(result: Analysis, out: Path) -> str:
    worst = min((c for c in result.per_class if c.f1 is not None), key=lambda c: c.f1 or 0.0, default=None)
    confused = result.confused[0] if result.confused else None
    parts = [
        f"analysis: {result.num_images} images, accuracy {result.accuracy:.1%}"
        + (f", macro F1 {result.macro_f1:.3f}" if result.macro_f1 is not None else "")
    ]
    if worst is not None:
        parts.append(f"lowest F1 {worst.name} ({worst.f1:.2f})")
    if confused:
        parts.append(f"most confused {confused['true']} -> {confused['predicted']} ({confused['count']}x)")
    return "; ".join(parts) + f"; in {out}/" + "".join(f" ({note})" for note in result.notes)


def _paths(dataset) -> list[str] | None:
    samples = getattr(dataset, "samples", None)
    items = getattr(samples, "items", None)
    return [str(p) for p, _ in items] if items is not None else None


def _per_class_csv(figures: list[ClassFigures]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    for c in figures:
        writer.writerow([c.name, *("" if v is None else f"{v:.6f}" for v in (c.precision, c.recall, c.f1)), c.support])
    return buffer.getvalue()


def _cam_images(labels, predicted, p_pred, losses, count: int) -> list[int]:
    """Half the top losses (wrong or unsure), half the most confident right answers."""
    wrong = [int(i) for i in np.argsort(-losses, kind="stable")][: (count + 1) // 2]
    right = [int(i) for i in np.argsort(-p_pred, kind="stable") if labels[i] == predicted[i] and i not in wrong]
    return wrong + right[: count - len(wrong)]


def _short(name: str, width: int = 20) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _rgb(crop: torch.Tensor) -> np.ndarray:
    """HWC for drawing; a grayscale crop (--in-chans 1) shown as grey RGB."""
    return crop.expand(3, -1, -1).permute(1, 2, 0).numpy()


def _plot_top_losses(items: list[dict[str, Any]], crops: dict[int, torch.Tensor], title: str):
    plt = pyplot()
    cols = min(4, max(1, len(items)))
    rows = max(1, math.ceil(len(items) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.5 * rows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        ax.imshow(_rgb(crops[item["index"]]), interpolation="lanczos")
        wrong = item["true"] != item["predicted"]
        ax.set_title(
            f"true: {_short(item['true'])}\npredicted: {_short(item['predicted'])} "
            f"({item['probability']:.0%})\nloss {item['loss']:.2f}, p(true) {item['true_probability']:.0%}",
            fontsize=9,
            color="firebrick" if wrong else "black",
            loc="left",
        )
    fig.suptitle(f"Top losses{': ' + title if title else ''} (red: misclassified)", fontsize=11)
    return fig


def find_cam_target(model: nn.Module, x: torch.Tensor) -> CamTarget | None:
    """The plugin's CamTarget, or the last module whose output is a spatial feature map
    (N, C, H, W with H, W > 1) outside the head."""
    backbone = backbone_of(model)
    _, answer = ask(backbone.entry, "backbone_cam_target", model=model)
    if answer is not None:
        if not isinstance(answer, CamTarget):
            raise ZooAdaptError(
                f"plugin {backbone.entry.plugin!r}: backbone_cam_target must return a CamTarget, "
                f"not {type(answer).__name__}"
            )
        return answer
    head = backbone.built_head.attr
    found: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if name and name != head and not name.startswith(head + "."):

            def keep(mod, args, output, name=name):
                if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[-2:]) > 1:
                    found.append(name)

            hooks.append(module.register_forward_hook(keep))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return CamTarget(found[-1]) if found else None


def _nothing(cam: np.ndarray) -> str:
    """Grad-CAM keeps only positive evidence: an all-zero map means none was found."""
    return "\n(no positive evidence)" if float(np.max(cam)) < 1e-6 else ""


def _cams(
    model: nn.Module,
    crops: list[torch.Tensor],
    predicted: list[int],
    true: list[int],
    probs: list[float],
    classes: list[str],
    norm: Normalization,
    device: torch.device,
    path: Path,
    title: str,
) -> tuple[bool, str | None]:
    """cams.png: each image, the CAM of the predicted class and of the true class. Returns
    whether it was written and a note: why not (no usable layer), or that its maps are
    too coarse to read."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if not crops:
        return False, "class activation maps skipped: no images"
    x = normalize(torch.stack(crops).to(device), norm)
    target = find_cam_target(model, x)
    if target is None:
        return False, (
            f"class activation maps skipped: no layer of the model gives a spatial feature map at {x.shape[-1]} px"
        )
    layer = model.get_submodule(target.layer)
    grid = cam_grid(model, layer, target, x)
    coarse = None
    if grid is not None and max(grid) <= COARSE_GRID:
        coarse = (
            f"class activation maps on a {grid[0]}x{grid[1]} grid at {target.layer} ({x.shape[-1]} px input): "
            f"too coarse to read (each cell covers about {x.shape[-1] // max(grid)} px); a larger --image-size "
            "gives finer maps"
        )
    reshape = None
    if target.prefix_tokens is not None:

        def reshape(t, prefix=target.prefix_tokens):
            t = t[:, prefix:, :]
            side = int(round(math.sqrt(t.shape[1])))
            return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(True)  # frozen groups too: the gradients reach the CAM layer
        with torch.enable_grad(), GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
            maps = {
                kind: cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in wanted])
                for kind, wanted in (("predicted", predicted), ("true", true))
            }
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)
    plt = pyplot()
    fig, axes = plt.subplots(len(crops), 3, figsize=(9.3, 3.5 * len(crops) + 0.8), squeeze=False, layout="constrained")
    for row, crop in enumerate(crops):
        rgb = _rgb(crop).astype(np.float32) / 255
        wrong = predicted[row] != true[row]
        panels = [
            (rgb, f"image\ntrue: {_short(classes[true[row]], 24)}"),
            (
                show_cam_on_image(rgb, maps["predicted"][row], use_rgb=True),
                f"evidence for predicted\n{_short(classes[predicted[row]], 24)} ({probs[row]:.0%})"
                + _nothing(maps["predicted"][row]),
            ),
            (
                show_cam_on_image(rgb, maps["true"][row], use_rgb=True),
                f"evidence for true\n{_short(classes[true[row]], 24)}" + _nothing(maps["true"][row]),
            ),
        ]
        for col, (image, label) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image, interpolation="lanczos")
            ax.set_title(label, fontsize=9, color="firebrick" if wrong and col == 1 else "black")
            ax.axis("off")
    fig.suptitle(
        f"Grad-CAM at {target.layer}{': ' + title if title else ''}\nwarm colours: where the class's "
        f"evidence is; red title: misclassified"
        + (f"\n{grid[0]}x{grid[1]} grid: too coarse to read" if coarse and grid else ""),
        fontsize=11,
    )
    save_figure(fig, path, tight=False)
    return True, coarse


COARSE_GRID = 3  # a map of at most 3x3 cells says little more than "somewhere in this third"


def cam_grid(model: nn.Module, layer: nn.Module, target: CamTarget, x: torch.Tensor) -> tuple[int, int] | None:
    """(rows, columns) of the map Grad-CAM computes at `layer` for inputs like `x`."""
    shapes: list[tuple[int, ...]] = []
    hook = layer.register_forward_hook(
        lambda mod, args, output: shapes.append(tuple(output.shape)) if isinstance(output, torch.Tensor) else None
    )
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        hook.remove()
    if not shapes:
        return None
    if target.prefix_tokens is None:
        return (shapes[0][-2], shapes[0][-1]) if len(shapes[0]) == 4 else None
    side = int(round(math.sqrt(shapes[0][1] - target.prefix_tokens)))
    return side, side


def analyse_folder(
    model_path: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    cams: str = "auto",
    top: int = 12,
    batch_size: int = 64,
    device: str = "auto",
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Analysis:
    """`zoo-adapt analyse`: an exported model on a labelled ImageFolder (its held-out
    split when it has train/ and val/); files to `out` (default: analysis/ beside the
    model). The header and the images are checked before the weights are loaded."""
    if cams not in ("auto", "on", "off"):
        raise ZooAdaptError(f"--cams must be auto, on or off, not {cams!r}")
    if cams == "on":
        require_cams()
    card, _ = read_card(model_path)
    if card.multi_label:
        raise ZooAdaptError(
            f"{model_path} is a multi-label model: the error analysis covers single-label models "
            "(zoo-adapt evaluate --labels gives its per-class figures)"
        )
    samples = scan_folder(labelled_folder(data), classes=card.classes)
    dev = resolve_device(device)
    prepare_device(dev)
    model, card = load_model(model_path, dev)
    out = Path(out) if out else Path(model_path).resolve().parent / "analysis"
    return analyse(
        model,
        ImageDataset(samples),
        card.classes,
        card.normalization,
        out,
        dev,
        cams=cams,
        top=top,
        batch_size=batch_size,
        workers=default_workers(dev) if workers is None else workers,
        title=card.backbone,
        log=log,
    )
