"""What a model hub expects in a run folder: a model card README.md (YAML front matter
with library, tags, datasets, metrics and the model-index results; the measured results;
how to load the model with plain timm or torchvision and with zoo-adapt; the training
options) and, for timm backbones, the config.json that lets plain timm build and load
the model from the folder: `timm.create_model("local-dir:RUN", pretrained=True)` (or
"hf-hub:USER/REPO" once pushed). Written from the folder's files, so `zoo-adapt push`
can also write them for an older run."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from zoo_adapt import __version__
from zoo_adapt.files import write_text
from zoo_adapt.model.weights import WEIGHTS_SUFFIXES
from zoo_adapt.ship.export import load_model, read_card

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CARD, TIMM_CONFIG = "README.md", "config.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def dataset_name(options: dict[str, Any]) -> str:
    if options.get("dataset"):
        return str(options["dataset"])
    if options.get("data"):
        return Path(str(options["data"])).resolve().name or "images"
    return "zoo-adapt-demo"


def write_hub_files(out: str | Path, model=None, log: Callable[[str], None] | None = None) -> list[Path]:
    """README.md (and config.json for timm backbones) from the run folder `out`;
    `model`: the model itself when at hand (else it is rebuilt, without downloading)."""
    out = Path(out)
    card, meta = read_card(out / "model.safetensors")
    written = []
    if card.library == "timm":
        if model is None:
            model, _ = load_model(out / "model.safetensors")
        config = timm_config(model, card)
        if config is not None:
            written.append(write_text(out / TIMM_CONFIG, json.dumps(config, indent=2)))
    text = model_card(out, card, meta, has_timm_config=(out / TIMM_CONFIG).is_file() and card.library == "timm")
    written.append(write_text(out / CARD, text))
    if log:
        log(f"model card: {out / CARD}" + (f", timm config: {out / TIMM_CONFIG}" if len(written) > 1 else ""))
        if importlib.util.find_spec("huggingface_hub") is None:
            log('model card: front matter written without huggingface_hub (pip install "zoo-adapt[hub]" to check it)')
    return written


def timm_config(model, card) -> dict[str, Any] | None:
    """timm's own config.json for the model (timm's save_config_for_hf), with the
    classes as label names and the normalization and size the model was fine-tuned
    with; None when the model is not a timm model."""
    if not hasattr(model, "pretrained_cfg"):
        return None
    from timm.models._hub import save_config_for_hf  # what timm.models.push_to_hf_hub writes

    norm = card.normalization
    data_config = {
        "input_size": tuple(norm.input_size),
        "mean": tuple(norm.mean),
        "std": tuple(norm.std),
        "interpolation": norm.interpolation,
        "crop_pct": norm.crop_pct,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / TIMM_CONFIG
        save_config_for_hf(
            model,
            str(path),
            model_config={"label_names": list(card.classes)},
            # a one-channel model (--in-chans 1): timm builds it so from the folder
            model_args={"in_chans": norm.channels} if norm.channels != 3 else None,
            data_config=data_config,
        )
        config = json.loads(path.read_text())
    for key in ("tag", "license", "hf_hub_id", "url", "paper_ids", "paper_name", "origin_url"):
        config["pretrained_cfg"].pop(key, None)  # they describe timm's own weights, not these
    return config


# a one-channel export (--in-chans 1) of a torchvision model: its first convolution takes one channel
ONE_CHANNEL_STEM = [
    "# one input channel (--in-chans 1): the first convolution takes one channel",
    "name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))",
    "model.set_submodule(name, torch.nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, "
    "conv.padding, conv.dilation, bias=conv.bias is not None))",
]

# --dataset names (torchvision's datasets) -> their Hub dataset ids and pretty names; the
# validation split zoo-adapt uses is the test split for each of these
HUB_DATASETS = {
    "cifar10": ("uoft-cs/cifar10", "CIFAR-10"),
    "cifar100": ("uoft-cs/cifar100", "CIFAR-100"),
    "mnist": ("ylecun/mnist", "MNIST"),
    "fashion-mnist": ("zalando-datasets/fashion_mnist", "Fashion-MNIST"),
    "svhn": ("ufldl-stanford/svhn", "SVHN"),
    "food101": ("ethz/food101", "Food-101"),
}
TORCHVISION_LICENSE = "bsd-3-clause"  # torchvision's weights come under torchvision's BSD-3-Clause
# license texts in package metadata -> the Hub's license ids
HUB_LICENSES = {
    "apache-2.0": "apache-2.0",
    "apache software license": "apache-2.0",
    "apache license 2.0": "apache-2.0",
    "mit": "mit",
    "mit license": "mit",
    "bsd-3-clause": "bsd-3-clause",
    "bsd-2-clause": "bsd-2-clause",
    "bsd license": "bsd",
    "gpl-3.0": "gpl-3.0",
    "lgpl-3.0": "lgpl-3.0",
    "mpl-2.0": "mpl-2.0",
    "cc-by-4.0": "cc-by-4.0",
    "cc-by-nc-4.0": "cc-by-nc-4.0",
    "cc0-1.0": "cc0-1.0",
    "unlicense": "unlicense",
}


@dataclass(frozen=True)
class Upstream:
    """What the Hub should know of the weights fine-tuning started from: a Hub repository
    holding them (`base_model`, only a real one) and their license, with where it was read."""

    base_model: str | None = None
    license: str | None = None
    license_from: str = ""


def upstream_weights(card, meta: dict[str, str]) -> Upstream:
    """The starting weights' Hub id and license where they are known: none from scratch
    or from a user's file; torchvision's license for its weights; for timm's own
    pretrained tags, the tag's Hub repository and license from timm's pretrained_cfg;
    for weights shipped as a PyPI package (the registry names the package), its license
    from the package metadata."""
    start = meta.get("pretrained_weights")
    if start in (None, "None") or str(start).endswith(WEIGHTS_SUFFIXES) or "/" in str(start) or "\\" in str(start):
        return Upstream()  # trained from scratch, or from a file of the user's
    tag = card.entry.weights
    if tag:
        try:
            dist = importlib.metadata.metadata(tag)
        except importlib.metadata.PackageNotFoundError:
            dist = None
        if dist is not None:
            return Upstream(None, package_license(dist), f"the {tag} package's metadata")
    if card.library == "torchvision":
        return Upstream(None, TORCHVISION_LICENSE, "torchvision")
    if card.library == "timm":
        import timm

        try:
            cfg = timm.models.get_pretrained_cfg(f"{card.entry.upstream}.{tag}" if tag else card.entry.upstream)
        except RuntimeError:  # not one of timm's pretrained tags
            cfg = None
        if cfg is not None:
            return Upstream(cfg.hf_hub_id or None, cfg.license or None, "timm's pretrained_cfg")
    return Upstream()


def package_license(dist) -> str | None:
    """A distribution's license (its License-Expression, License or classifier) as a Hub
    license id, "other:TEXT" where the Hub has no id for it, None where it says none."""
    text = dist.get("License-Expression") or dist.get("License") or ""
    if not text.strip() or text.strip().upper() == "UNKNOWN":
        classifiers = [c for c in dist.get_all("Classifier") or [] if c.startswith("License ::")]
        text = classifiers[0].rsplit("::", 1)[1] if classifiers else ""
    text = text.strip()
    if not text or text.upper() == "UNKNOWN":
        return None
    return HUB_LICENSES.get(text.lower(), f"other:{text.splitlines()[0][:60]}")


def hub_dataset(options: dict[str, Any]) -> tuple[str, str, str] | None:
    """(Hub id, pretty name, split) of a --dataset the Hub holds; None for local data."""
    name = str(options.get("dataset") or "").lower().replace("_", "-")
    if name not in HUB_DATASETS:
        return None
    return (*HUB_DATASETS[name], "test")


RESULTS = (
    ("val_accuracy", "Top-1 accuracy (validation)"),
    ("val_top5", "Top-5 accuracy (validation)"),
    ("val_accuracy_tta", "Top-1 accuracy with test-time augmentation (validation)"),
)


def front_matter(card, metrics: dict[str, Any], options: dict[str, Any], name: str, upstream: Upstream) -> str:
    """The card's YAML front matter, built with huggingface_hub's ModelCardData and
    EvalResult where it is installed (else the same fields by hand): only real Hub ids
    (base_model, datasets), the upstream weights' license where known, the measured
    results as a model-index for a Hub dataset (a local folder's results are in the body)."""
    fields: dict[str, Any] = {
        "library_name": "timm" if card.library == "timm" else "pytorch",
        "pipeline_tag": "image-classification",
        "tags": list(
            dict.fromkeys(["image-classification", "zoo-adapt", "transfer-learning", card.library, card.entry.upstream])
        ),
        "metrics": ["accuracy"],
    }
    if upstream.base_model:
        fields["base_model"] = upstream.base_model
    if upstream.license and upstream.license.startswith("other:"):
        fields["license"], fields["license_name"] = "other", upstream.license.split(":", 1)[1]
    elif upstream.license:
        fields["license"] = upstream.license
    dataset = hub_dataset(options)
    results = [(key, label) for key, label in RESULTS if isinstance(metrics.get(key), (int, float))]
    if dataset:
        fields["datasets"] = [dataset[0]]
    try:
        from huggingface_hub import EvalResult, ModelCardData
    except ImportError:
        return _front_matter_by_hand(fields, name, dataset, results, metrics)
    evals = []
    if dataset:
        hub_id, pretty, split = dataset
        evals = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=hub_id,
                dataset_name=pretty,
                dataset_split=split,
                metric_type="accuracy",
                metric_value=round(float(metrics[key]), 4),
                metric_name=label,
            )
            for key, label in results
        ]
    return ModelCardData(model_name=name if evals else None, eval_results=evals or None, **fields).to_yaml()


def _front_matter_by_hand(fields, name, dataset, results, metrics) -> str:
    """Without huggingface_hub: the same fields, written as ModelCardData writes them."""
    matter = dict(sorted(fields.items()))
    if dataset and results:
        matter["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": {"name": dataset[1], "type": dataset[0], "split": dataset[2]},
                        "metrics": [
                            {"type": "accuracy", "value": round(float(metrics[key]), 4), "name": label}
                            for key, label in results
                        ],
                    }
                ],
            }
        ]
    return yaml.safe_dump(matter, sort_keys=False, allow_unicode=True)


def _pct(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


def _with_interval(metrics: dict[str, Any], key: str) -> str:
    """'93.3% [90.0, 95.7]': the figure and its 95% interval when metrics.json has one."""
    interval = metrics.get(f"{key}_interval")
    return _pct(metrics.get(key)) + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")


def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def model_card(out: Path, card, meta: dict[str, str], has_timm_config: bool) -> str:
    metrics = _read_json(out / "metrics.json")
    options = _read_toml(out / "config.toml")
    analysis = _read_json(out / "analysis" / "analysis.json")
    name = out.resolve().name
    norm = card.normalization
    size, resize = norm.image_size, norm.resize_size()
    classes = card.classes
    upstream = upstream_weights(card, meta)
    head = front_matter(card, metrics, options, name, upstream)
    lines = [
        "---",
        head.rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        f"`{card.entry.upstream}` ({card.library}, pretrained weights: {meta.get('pretrained_weights', '?')}) "
        f"fine-tuned with [zoo-adapt](https://pypi.org/project/zoo-adapt/) "
        f"{meta.get('zoo_adapt_version', __version__)} "
        f"to tell {len(classes)} classes apart, on `{dataset_name(options)}`.",
        "",
    ]
    if upstream.license:
        lines += [
            f"License: {upstream.license.removeprefix('other:')}, the upstream weights' license "
            f"({upstream.license_from}); check it before you share or use this model.",
            "",
        ]
    elif upstream.license_from:
        lines += [
            f"License: not stated for the upstream weights ({upstream.license_from} names none); check their "
            "source before you share or use this model.",
            "",
        ]
    # results
    lines += ["## Results", ""]
    if isinstance(metrics.get("val_accuracy"), (int, float)):
        measured = (
            f"Cross-validated ({metrics['folds']} folds): measured on the {metrics.get('num_val', '?')} out-of-fold "
            "predictions (each training image predicted by the fold model that did not train on it); the "
            f"model here was refit on every training image for {metrics.get('refit_epochs', '?')} epochs"
            if metrics.get("folds")
            else f"Measured on {metrics.get('num_val', '?')} validation images with the kept model (epoch "
            f"{metrics.get('kept_epoch', '?')} of {metrics.get('epochs', '?')}, {metrics.get('strategy', '')})"
        )
        lines += [
            measured + "; in brackets, the 95% interval (Wilson for proportions, a bootstrap over images for the "
            "others):",
            "",
            "| metric | value |",
            "| --- | --- |",
            f"| top-1 accuracy | {_with_interval(metrics, 'val_accuracy')} |",
            f"| top-5 accuracy | {_with_interval(metrics, 'val_top5')} |",
            f"| loss | {_num(metrics.get('val_loss'))} |",
        ]
        if metrics.get("val_balanced_accuracy") is not None:
            lines.append(f"| balanced accuracy | {_with_interval(metrics, 'val_balanced_accuracy')} |")
        if metrics.get("val_accuracy_tta") is not None:
            paired = metrics.get("tta_vs_plain") or {}
            against = (
                f" ({100 * paired['difference']:+.1f} points [{100 * paired['interval'][0]:+.1f}, "
                f"{100 * paired['interval'][1]:+.1f}] against none, "
                f"{'within noise' if paired.get('within_noise') else 'beyond noise'})"
                if paired
                else ""
            )
            lines.append(
                f"| top-1 accuracy with test-time augmentation | {_with_interval(metrics, 'val_accuracy_tta')}"
                f"{against} |"
            )
        if metrics.get("temperature") is not None and metrics.get("val_ece") is not None:
            lines.append(
                f"| calibration (temperature {metrics['temperature']:.2f}) | ECE {_pct(metrics.get('val_ece'))} -> "
                f"{_pct(metrics.get('val_ece_calibrated'))}, NLL {_num(metrics.get('val_nll'))} -> "
                f"{_num(metrics.get('val_nll_calibrated'))} |"
            )
        held = metrics.get("held_out") or {}
        if held.get("test_accuracy") is not None:
            lines.append(
                f"| top-1 accuracy on the {held.get('num_images')} held-out images (scored once) | "
                f"{_with_interval(held, 'test_accuracy')} |"
            )
        if metrics.get("val_macro_f1") is not None:  # the analysis's figure too: one definition (scores.macro_f1)
            interval = metrics.get("val_macro_f1_interval")
            shown = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
            lines.append(f"| macro F1 | {_num(metrics.get('val_macro_f1'))}{shown} |")
        lines.append("")
    else:
        lines += ["No validation set was used: no measured results.", ""]
    per_class = analysis.get("per_class") or []
    if per_class:
        lines += [
            "Per class (validation):",
            "",
            "| class | precision | recall | F1 | support |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {_cell(c['name'])} | {_num(c['precision'])} | {_num(c['recall'])} | {_num(c['f1'])} | {c['support']} |"
            for c in per_class[:100]
        ]
        if len(per_class) > 100:
            lines.append(f"| ... {len(per_class) - 100} more in analysis/per_class.csv | | | | |")
        lines.append("")
    if analysis.get("confused"):
        lines += [
            "Most confused (true -> predicted, count): "
            + "; ".join(
                f"{_cell(c['true'])} -> {_cell(c['predicted'])} ({c['count']})" for c in analysis["confused"][:5]
            ),
            "",
        ]
    pictures = [
        p
        for p in ("curves.png", "confusion_matrix.png", "analysis/top_losses.png", "analysis/cams.png")
        if (out / p).is_file()
    ]
    if pictures:
        lines += [" ".join(f"![{Path(p).stem.replace('_', ' ')}]({p})" for p in pictures), ""]
    # how to use
    lines += [
        "## How to use",
        "",
        f"Input: {'RGB' if norm.channels == 3 else 'grayscale (one channel, 8-bit)'}, shorter side resized to "
        f"{resize} px ({norm.interpolation}), centre crop {size} x {size}, "
        f"then `(x / 255 - mean) / std` with mean {list(norm.mean)} and std {list(norm.std)}. Classes, in "
        "output order: "
        + ", ".join(f"`{c}`" for c in classes[:50])
        + (f" (and {len(classes) - 50} more: see config.json or the model's header)" if len(classes) > 50 else "")
        + ".",
        "",
    ]
    if has_timm_config:
        lines += [
            "With plain timm (this folder, or `hf-hub:USER/REPO` once pushed):",
            "",
            "```python",
            "import timm, torch",
            "from PIL import Image",
            "",
            f'model = timm.create_model("local-dir:{out}", pretrained=True).eval()',
            "config = timm.data.resolve_model_data_config(model)",
            "transform = timm.data.create_transform(**config)",
            f'x = transform(Image.open("photo.jpg").convert("{"RGB" if norm.channels == 3 else "L"}"))[None]',
            "with torch.no_grad():",
            f"    probabilities = (model(x) / {card.temperature!r}).softmax(-1)  # the calibration temperature",
            'print(model.pretrained_cfg["label_names"][probabilities.argmax()])',
            "```",
            "",
        ]
    else:
        constructor = "torchvision.models.get_model" if card.library == "torchvision" else f"{card.library} model"
        lines += [
            f"With plain {card.library}:",
            "",
            "```python",
            "import json, torch, torchvision",
            "from safetensors import safe_open",
            "from safetensors.torch import load_file",
            "",
            f'path = "{out}/model.safetensors"',
            'with safe_open(path, "pt") as f:',
            "    meta = f.metadata()",
            'classes = json.loads(meta["classes"])',
            f'model = torchvision.models.get_model("{card.entry.upstream}", num_classes=len(classes))'
            if card.library == "torchvision"
            else f"model = ...  # the {constructor} {card.entry.upstream}",
            *(ONE_CHANNEL_STEM if norm.channels == 1 and card.library == "torchvision" else []),
            "model.load_state_dict(load_file(path), strict=True)",
            "model.eval()",
            'temperature = float(meta.get("temperature", 1.0))  # probabilities: (model(x) / temperature).softmax(-1)',
            "```",
            "",
        ]
    lines += [
        "With zoo-adapt (same preprocessing, test-time augmentation on request):",
        "",
        "```bash",
        f"zoo-adapt predict --model {out}/model.safetensors photo.jpg --top-k 3",
        f"zoo-adapt evaluate --model {out}/model.safetensors --data path/to/labelled/images",
        "```",
        "",
        "```python",
        "from PIL import Image",
        "from zoo_adapt import eval_transform, load_model",
        "",
        f'model, card = load_model("{out}/model.safetensors")',
        'x = eval_transform(card.normalization)(Image.open("photo.jpg"))[None]',
        "probabilities = (model(x) / card.temperature).softmax(-1)",
        "print(card.classes[probabilities.argmax()])",
        "```",
        "",
    ]
    if (out / "model.onnx").is_file():
        lines += [
            "`model.onnx` is the same model for ONNX runtimes (dynamic batch); its metadata_props hold the "
            "classes and the normalization.",
            "",
        ]
    # training
    lines += ["## Training", ""]
    if metrics:
        seconds = metrics.get("train_seconds")
        lines += [
            f"{metrics.get('num_train', '?')} training images, {metrics.get('epochs_done', '?')} epochs on "
            f"{metrics.get('device', '?')} ({metrics.get('precision', '?')})"
            + (f", {seconds:.0f} s" if isinstance(seconds, (int, float)) else "")
            + ". Options (config.toml; "
            "`zoo-adapt finetune --config config.toml --out NEW` reruns it):",
            "",
        ]
    if options:
        lines += ["| option | value |", "| --- | --- |"]
        lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in options.items() if k not in ("out",)]
        lines.append("")
    files = [
        p
        for p in (
            "model.safetensors",
            "config.json",
            "model.onnx",
            "metrics.json",
            "history.csv",
            "config.toml",
            "curves.png",
            "confusion_matrix.png",
            "analysis",
        )
        if (out / p).exists()
    ]
    lines += ["## Files", "", ", ".join(f"`{f}`" for f in files) + ".", ""]
    return "\n".join(lines)
