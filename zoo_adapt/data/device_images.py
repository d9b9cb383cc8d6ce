"""Small datasets held decoded on the device: no workers and no JPEG decode after the
first pass.

Training images are decoded once, resized so the shorter side is the eval resize size
(image size / crop_pct, a little above the training size) with the longer side cut to
at most 4:3 about the centre, and kept as uint8 on a canvas; each batch's random resized
crop and flip are then drawn on the device, all images at once (`affine_grid` +
`grid_sample`), following torchvision's RandomResizedCrop sampling. Evaluation images
are kept as their exact eval crops (the same pixels `EvalTransform` gives).

The rule for `--data-on-device auto`: on when the decoded set takes at most a quarter
of the device's free memory (CUDA) or of the available RAM (CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from zoo_adapt.data.folders import worker_error
from zoo_adapt.data.pipeline import EpochBatches, EpochOrder, batch_sizes, device_index
from zoo_adapt.data.transforms import RATIO, EvalTransform, as_mode, image_mode, interpolation, normalize
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.seeds import process_seed
from zoo_adapt.zoo.backbone import Normalization

MAX_ASPECT = 4 / 3
FREE_FRACTION = 0.25


def canvas_side(resize: int) -> int:
    return math.ceil(resize * MAX_ASPECT)


def bytes_needed(num_train: int, num_eval: int, norm: Normalization) -> int:
    side, size = canvas_side(norm.resize_size()), norm.image_size
    return norm.channels * (num_train * side * side + num_eval * size * size)


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0


def fits(num_train: int, num_eval: int, norm: Normalization, device: torch.device) -> bool:
    return bytes_needed(num_train, num_eval, norm) <= FREE_FRACTION * free_bytes(device)


class _Canvas:
    """Resize shorter side to `resize`, cut the longer to 4:3 about the centre, paste
    top-left on an L x L uint8 canvas; remembers the image's height and width."""

    def __init__(self, norm: Normalization, resize: int):
        self.resize, self.side, self.mode = resize, canvas_side(resize), interpolation(norm)
        self.min_side, self.image_mode = resize, image_mode(norm)

    def __call__(self, image: Image.Image, rng=None):
        image = as_mode(image, self.image_mode)
        image = TF.resize(image, self.resize, interpolation=self.mode, antialias=True)
        w, h = image.size
        cw, ch = min(w, self.side), min(h, self.side)
        image = TF.center_crop(image, [ch, cw])
        pixels = TF.pil_to_tensor(image)
        canvas = torch.zeros(pixels.shape[0], self.side, self.side, dtype=torch.uint8)
        canvas[:, :ch, :cw] = pixels
        return canvas, torch.tensor([ch, cw])


class _Decoded(Dataset):
    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        transform = self.transform
        image, label = self.base.raw(i, getattr(transform, "min_side", None), getattr(transform, "image_mode", "RGB"))
        return self.transform(image), label


def _decode_all(dataset, transform, device, workers: int, batch: int = 64):
    """One pass over `dataset` (an ImageDataset or Transformed with `raw`) through
    `transform`, stacked on `device`."""
    loader = DataLoader(_Decoded(dataset, transform), batch_size=batch, num_workers=workers)
    images, extras, labels = [], [], []
    try:
        for out, y in loader:
            if isinstance(out, (list, tuple)):
                out, extra = out
                extras.append(extra)
            images.append(out.to(device))
            labels.append(torch.as_tensor(y))
    except ZooAdaptError as e:
        raise worker_error(e) from None
    sizes = torch.cat(extras).to(device) if extras else None
    return torch.cat(images), sizes, torch.cat(labels).to(device)


def random_crop_boxes(
    sizes: torch.Tensor, scale: tuple[float, float], generator: torch.Generator, attempts: int = 10
) -> torch.Tensor:
    """(top, left, height, width) per image, drawn as torchvision's RandomResizedCrop
    draws them (area fraction in `scale`, log-uniform aspect ratio in 3/4..4/3, up to
    ten attempts, else the centre crop at the nearest allowed ratio), for all images at
    once. `sizes`: (N, 2) heights and widths."""
    n, dev = len(sizes), sizes.device
    h, w = sizes[:, 0:1].float(), sizes[:, 1:2].float()
    rand = lambda *shape: torch.rand(*shape, generator=generator, device=dev)  # noqa: E731
    area = h * w * (scale[0] + (scale[1] - scale[0]) * rand(n, attempts))
    logr = math.log(RATIO[0]) + (math.log(RATIO[1]) - math.log(RATIO[0])) * rand(n, attempts)
    aspect = logr.exp()
    cw = (area * aspect).sqrt().round()
    ch = (area / aspect).sqrt().round()
    ok = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
    first = ok.float().argmax(1, keepdim=True)
    found = ok.any(1)
    cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
    h, w = h.squeeze(1), w.squeeze(1)
    # fallback: the whole image, narrowed to the nearest allowed ratio, centred
    ratio = w / h
    fw = torch.where(ratio < RATIO[0], w, torch.where(ratio > RATIO[1], (h * RATIO[1]).round(), w))
    fh = torch.where(ratio < RATIO[0], (w / RATIO[0]).round(), h)
    cw, ch = torch.where(found, cw, fw), torch.where(found, ch, fh)
    top = torch.where(found, ((h - ch + 1) * rand(n)).floor(), ((h - ch) / 2).floor())
    left = torch.where(found, ((w - cw + 1) * rand(n)).floor(), ((w - cw) / 2).floor())
    return torch.stack([top, left, ch, cw], 1)


def crop_resize(
    canvas: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor, vflip: torch.Tensor | None = None
) -> torch.Tensor:
    """Crop each box out of the uint8 canvases and resize it to size x size (bilinear),
    mirrored where `flip`, upside down where `vflip`; float32 in 0..255."""
    n, channels, side, _ = canvas.shape
    top, left, ch, cw = boxes.unbind(1)
    theta = torch.zeros(n, 2, 3, device=canvas.device)
    sign = 1 - 2 * flip.float()
    theta[:, 0, 0] = cw / side * sign
    theta[:, 0, 2] = (2 * left + cw) / side - 1
    theta[:, 1, 1] = ch / side * (1 - 2 * vflip.float() if vflip is not None else 1)
    theta[:, 1, 2] = (2 * top + ch) / side - 1
    grid = F.affine_grid(theta, [n, channels, size, size], align_corners=False)
    return F.grid_sample(canvas.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def quarter_turns(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Each image of the square batch `x` turned by its number of quarter turns (0-3,
    counter-clockwise, as torch.rot90)."""
    out = x.clone()
    for k in (1, 2, 3):
        chosen = turns == k
        if chosen.any():
            out[chosen] = torch.rot90(x[chosen], k, dims=(-2, -1))
    return out


class DeviceImages:
    """A training set decoded once and augmented on the device (see the module doc)."""

    def __init__(
        self,
        dataset,
        *,
        norm: Normalization,
        device: torch.device,
        batch_size: int,
        order: EpochOrder,
        min_scale: float,
        hflip: bool,
        workers: int = 0,
        channels_last: bool = False,
        seed: int = 0,
        vflip: bool = False,
        rot90: bool = False,
    ):
        self.size, self.norm, self.device, self.batch_size, self.order = (
            norm.image_size,
            norm,
            device,
            batch_size,
            order,
        )
        self.scale, self.hflip, self.channels_last, self.seed = (min_scale, 1.0), hflip, channels_last, seed
        self.vflip, self.rot90 = vflip, rot90
        transform = _Canvas(norm, norm.resize_size())
        self.canvas, self.sizes, self.labels = _decode_all(dataset, transform, device, workers)
        self.num_samples = len(order)
        self.generator = torch.Generator(device=device)

    def __len__(self) -> int:
        return len(batch_sizes(len(self.order), self.batch_size))

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)
        self.generator.manual_seed(process_seed(self.seed, epoch, self.order.rank))

    def __iter__(self):
        for batch in EpochBatches(self.order, self.batch_size):
            index = device_index(batch, self.device)
            boxes = random_crop_boxes(self.sizes[index], self.scale, self.generator)
            flip = (torch.rand(len(index), generator=self.generator, device=self.device) < 0.5) & self.hflip
            vflip = None  # drawn only when asked, so that runs without keep their draws
            if self.vflip:
                vflip = torch.rand(len(index), generator=self.generator, device=self.device) < 0.5
            x = crop_resize(self.canvas[index], boxes, self.size, flip, vflip).clamp_(0, 255)
            if self.rot90:
                x = quarter_turns(x, torch.randint(4, (len(index),), generator=self.generator, device=self.device))
            yield normalize(x, self.norm, self.channels_last), self.labels[index]


class DeviceEvalImages:
    """Evaluation images kept as their eval crops on the device, in order."""

    def __init__(
        self,
        dataset,
        *,
        norm: Normalization,
        device: torch.device,
        batch_size: int,
        order: EpochOrder,
        workers: int = 0,
        channels_last: bool = False,
    ):
        self.norm, self.batch_size, self.order, self.channels_last = norm, batch_size, order, channels_last
        self.images, _, self.labels = _decode_all(dataset, EvalTransform(norm), device, workers)
        self.num_samples = len(order)

    def __len__(self) -> int:
        return len(batch_sizes(len(self.order), self.batch_size))

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __iter__(self):
        for batch in EpochBatches(self.order, self.batch_size):
            index = device_index(batch, self.images.device)
            yield normalize(self.images[index], self.norm, self.channels_last), self.labels[index]
