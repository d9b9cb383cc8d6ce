"""ONNX export of a zoo-adapt model: torch.onnx's exporter (torch.export-based) with a
dynamic batch dimension, the model's metadata (classes, normalization, input size) in
the ONNX file's metadata_props, and a check on export: onnxruntime's logits against
PyTorch's on real images, the largest difference reported (an error above the
tolerance).

The input is normalized float NCHW, (RGB / 255 - mean) / std, as metadata_props say (one
grayscale channel for an --in-chans 1 export); with `fold_normalization` the
normalization is inside the graph and the input is RGB
in [0, 1]. Either way, resize the shorter side to `resize` and centre-crop to the input
size first (timm's and torchvision's eval recipe; also in the metadata).

A calibrated model's temperature is baked into the graph: its `logits` output is the
network's logits divided by the temperature (metadata_props `temperature` says by how
much), so its softmax gives the calibrated probabilities `zoo-adapt predict` gives."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from zoo_adapt import __version__
from zoo_adapt.data.folders import image_files, open_image
from zoo_adapt.data.transforms import EvalTransform, normalize
from zoo_adapt.errors import ZooAdaptError, first_line
from zoo_adapt.files import write_bytes
from zoo_adapt.ship.export import load_model

PACKAGES = ("onnx", "onnxruntime", "onnxscript")
INSTALL = 'pip install "zoo-adapt[onnx]"'
OPSET = 18
TOLERANCE = 1e-3  # largest |logit difference| accepted, relative to max(1, largest |logit|)
INPUT, OUTPUT = "pixel_values", "logits"


def require_onnx() -> None:
    for name in PACKAGES:
        if importlib.util.find_spec(name) is None:
            raise ZooAdaptError(f"ONNX export needs the package {name!r}, which is not installed: {INSTALL}")


class Calibrated(nn.Module):
    """The model's logits divided by its temperature."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


class Normalized(nn.Module):
    """The model with the normalization folded in: RGB (or grayscale) in [0, 1] in, logits out."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return self.model((x - mean) / std)


@dataclass
class OnnxReport:
    path: str
    opset: int
    fold_normalization: bool
    images: int
    real_images: bool
    max_abs_diff: float
    max_abs_logit: float
    same_top1: int
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        what = "real images" if self.real_images else "random inputs (no images given)"
        where = "inside the model (input RGB in [0, 1])" if self.fold_normalization else "outside (see its metadata)"
        return (
            f"{self.path}: ONNX opset {self.opset}, dynamic batch, {self.size_bytes / 1e6:.1f} MB, "
            f"normalization {where}; "
            f"onnxruntime vs PyTorch on {self.images} {what}: max |logit difference| {self.max_abs_diff:.2e}, "
            f"same top-1 on {self.same_top1}/{self.images}"
        )


def metadata(card, fold: bool) -> dict[str, str]:
    norm = card.normalization
    pixels = "RGB" if norm.channels == 3 else "grayscale (one channel, read as zoo-adapt reads it)"
    return {
        "zoo_adapt_version": __version__,
        "backbone": card.backbone,
        "upstream": card.entry.upstream,
        "library": card.library,
        "classes": json.dumps(card.classes),
        "input_size": json.dumps(list(norm.input_size)),
        "mean": json.dumps(list(norm.mean)),
        "std": json.dumps(list(norm.std)),
        "interpolation": norm.interpolation,
        "crop_pct": str(norm.crop_pct),
        "resize": str(norm.resize_size()),
        "normalization": (
            f"folded: input is {pixels} / 255 in [0, 1], NCHW float32"
            if fold
            else f"outside: input is ({pixels} / 255 - mean) / std, NCHW float32"
        ),
        "temperature": repr(float(card.temperature)),
        "logits": (
            "divided by the temperature inside the graph (calibrated: softmax gives the calibrated probabilities)"
            if card.temperature != 1.0
            else "the network's own (no calibration)"
        ),
    }


def export_onnx(
    model_path: str | Path,
    out: str | Path | None = None,
    images=None,
    fold_normalization: bool = False,
    opset: int = OPSET,
    max_images: int = 8,
    log: Callable[[str], None] | None = None,
) -> OnnxReport:
    """Export `model_path` (a zoo-adapt model.safetensors) to `out` (default: model.onnx
    beside it) and check it with onnxruntime on up to `max_images` of `images` (a
    labelled dataset with raw(i), a folder, or a list of image files; default: the
    scikit-image sample photographs when installed, else random inputs)."""
    require_onnx()
    import onnx
    import onnxruntime

    model_path = Path(model_path)
    out = Path(out) if out else model_path.with_name("model.onnx")
    model, card = load_model(model_path, "cpu")
    if card.temperature != 1.0:
        model = Calibrated(model, card.temperature).eval()
    net = Normalized(model, card.normalization.mean, card.normalization.std).eval() if fold_normalization else model
    batch = _verification_batch(card, images, max_images, fold_normalization)
    size = card.image_size
    dummy = torch.rand(2, card.normalization.channels, size, size)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                net,
                (dummy,),
                dynamo=True,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as e:
        raise ZooAdaptError(f"cannot export {card.backbone} ({card.entry.upstream}) to ONNX: {export_error(e)}") from e
    if program is None:
        raise ZooAdaptError(f"cannot export {card.backbone} to ONNX: torch.onnx.export returned no program")
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata(card, fold_normalization))
    data = proto.SerializeToString()
    write_bytes(out, data)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    x, real = batch
    with torch.no_grad():
        expected = net(x).float()
    got = torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])
    diff = float((got - expected).abs().max())
    largest = float(expected.abs().max())
    report = OnnxReport(
        str(out),
        opset,
        fold_normalization,
        len(x),
        real,
        diff,
        largest,
        int((got.argmax(-1) == expected.argmax(-1)).sum()),
        len(data),
    )
    if not diff <= TOLERANCE * max(1.0, largest):
        raise ZooAdaptError(
            f"{out}: onnxruntime's logits differ from PyTorch's by up to {diff:.2e} (tolerance "
            f"{TOLERANCE:g} x max(1, |logit|)); the ONNX model is not faithful, do not use it"
        )
    if log:
        log(report.line())
    return report


def export_error(e: BaseException) -> str:
    """The informative line of an exporter error: torch.onnx puts it under '## Exception
    summary', after advice; colour codes removed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    if "## Exception summary" in text:
        after = [line.strip() for line in text.split("## Exception summary", 1)[1].splitlines() if line.strip()]
        if after:
            return re.sub(r"^<class '[\w.]+'>: ", "", after[0])[:300]
    return first_line(e)[:300]


def _verification_batch(card, images, max_images: int, fold: bool) -> tuple[torch.Tensor, bool]:
    """(a batch as the ONNX model takes it, whether it is real images)."""
    transform = EvalTransform(card.normalization)
    crops: list[torch.Tensor] = []
    if images is None:
        crops = [transform(image) for image in _sample_photographs(max_images)]
    elif hasattr(images, "raw"):
        step = max(1, len(images) // max_images)
        crops = [transform(images.raw(i, mode=transform.image_mode)[0]) for i in range(0, len(images), step)][
            :max_images
        ]
    else:
        paths = image_files(images) if isinstance(images, (str, Path)) and Path(images).is_dir() else list(images)
        crops = [transform(open_image(p, mode=transform.image_mode)) for p in paths[:max_images]]
    if not crops:
        size = card.image_size
        chans = card.normalization.channels
        return torch.rand(3, chans, size, size) if fold else torch.randn(3, chans, size, size), False
    x = torch.stack(crops)
    return (x.float() / 255 if fold else normalize(x, card.normalization)), True


def _sample_photographs(count: int):
    try:
        import skimage.data
    except ImportError:
        return []
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass", "moon")[:count]:
        pixels = getattr(skimage.data, name)()
        out.append(Image.fromarray(pixels).convert("RGB"))
    return out
