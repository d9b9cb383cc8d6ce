"""Labelled images in: ImageFolder trees (with or without train/val subfolders),
torchvision datasets by name, and the embedded demo. Problems with the data are
ZooAdaptErrors that name the folder or file."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .errors import ZooAdaptError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TRAIN_DIRS = ("train", "training")
VAL_DIRS = ("val", "valid", "validation", "test")


def open_image(path: str | Path) -> Image.Image:
    """The image as RGB, fully decoded, or a ZooAdaptError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ZooAdaptError(f"cannot read image {path}: {e}") from None


def check_image(path: Path) -> None:
    """Cheap check at start-up (header and structure), so a bad file stops a run before
    training rather than in the middle of it."""
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:
        raise ZooAdaptError(f"cannot read image {path}: {e or type(e).__name__} (corrupt or "
                            "not an image?); remove it or replace it") from None


def image_files(folder: Path) -> list[Path]:
    """Images below `folder`, at any depth, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@dataclass
class Samples:
    """(path, label) pairs and the class names in index order."""

    items: list[tuple[Path, int]]
    classes: list[str]

    def labels(self) -> list[int]:
        return [label for _, label in self.items]


def scan_folder(root: str | Path, classes: Sequence[str] | None = None) -> Samples:
    """An ImageFolder: one subfolder per class. With `classes`, labels follow that order
    and a folder of a class outside it is an error."""
    root = Path(root)
    if not root.exists():
        raise ZooAdaptError(f"data folder not found: {root}")
    if not root.is_dir():
        raise ZooAdaptError(f"not a folder: {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        loose = image_files(root)
        raise ZooAdaptError(f"{root} has no class subfolders" + (
            f" (it holds {len(loose)} images directly; put each class in its own subfolder)"
            if loose else " and no images; expected <class>/<image> files"))
    names = list(classes) if classes is not None else found
    unknown = [c for c in found if c not in names]
    if unknown:
        raise ZooAdaptError(f"{root} has classes the model does not know: {', '.join(unknown[:5])}"
                            f" (model classes: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''})")
    items = []
    for name in found:
        files = image_files(root / name)
        if not files and classes is None:
            raise ZooAdaptError(f"class folder {root / name} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
        items += [(f, names.index(name)) for f in files]
    if not items:
        raise ZooAdaptError(f"{root} holds no images")
    for path, _ in items:
        check_image(path)
    return Samples(items, names)


def split_dirs(root: Path) -> tuple[Path | None, Path | None]:
    """(train, val) subfolders of a dataset root, if it has them."""
    sub = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    train = next((sub[d] for d in TRAIN_DIRS if d in sub), None)
    val = next((sub[d] for d in VAL_DIRS if d in sub), None)
    return train, val


def stratified_split(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples]:
    """Per class, a seeded `fraction` of the images (at least one where a class has two)."""
    if not 0 < fraction < 1:
        raise ZooAdaptError(f"--val-split must be between 0 and 1, not {fraction}")
    rng = random.Random(seed)
    train, val = [], []
    for label in range(len(samples.classes)):
        items = [s for s in samples.items if s[1] == label]
        rng.shuffle(items)
        n_val = min(len(items) - 1, max(1, round(len(items) * fraction))) if len(items) > 1 else 0
        val += items[:n_val]
        train += items[n_val:]
    return Samples(sorted(train), samples.classes), Samples(sorted(val), samples.classes)


class ImageDataset(Dataset):
    """Images from paths with a transform; decoding errors name the file."""

    def __init__(self, samples: Samples, transform: Callable | None = None):
        self.samples, self.transform, self.classes = samples, transform, samples.classes

    def __len__(self) -> int:
        return len(self.samples.items)

    def with_transform(self, transform: Callable | None) -> "ImageDataset":
        return ImageDataset(self.samples, transform)

    def raw(self, i: int):
        """(the decoded PIL image, label), before the transform."""
        path, label = self.samples.items[i]
        return open_image(path), label

    def __getitem__(self, i: int):
        image, label = self.raw(i)
        return (self.transform(image) if self.transform else image), label


class Transformed(Dataset):
    """Another dataset's (image, label) pairs through a transform (for torchvision datasets)."""

    def __init__(self, base: Dataset, transform: Callable, classes: list[str]):
        self.base, self.transform, self.classes = base, transform, classes

    def __len__(self) -> int:
        return len(self.base)

    def with_transform(self, transform: Callable) -> "Transformed":
        return Transformed(self.base, transform, self.classes)

    def raw(self, i: int):
        image, label = self.base[i]
        return image.convert("RGB"), int(label)

    def __getitem__(self, i: int):
        image, label = self.raw(i)
        return self.transform(image), label


# torchvision dataset name -> (class name, keyword arguments for train, for val)
TORCHVISION_DATASETS: dict[str, tuple[str, dict, dict]] = {
    "cifar10": ("CIFAR10", {"train": True}, {"train": False}),
    "cifar100": ("CIFAR100", {"train": True}, {"train": False}),
    "mnist": ("MNIST", {"train": True}, {"train": False}),
    "fashion-mnist": ("FashionMNIST", {"train": True}, {"train": False}),
    "svhn": ("SVHN", {"split": "train"}, {"split": "test"}),
    "stl10": ("STL10", {"split": "train"}, {"split": "test"}),
    "flowers102": ("Flowers102", {"split": "train"}, {"split": "val"}),
    "food101": ("Food101", {"split": "train"}, {"split": "test"}),
    "oxford-pets": ("OxfordIIITPet", {"split": "trainval"}, {"split": "test"}),
    "dtd": ("DTD", {"split": "train"}, {"split": "val"}),
}


def torchvision_dataset(name: str, root: str | Path, train_tf: Callable, val_tf: Callable):
    """(train, val, classes) of a torchvision dataset, downloading into `root` when online."""
    key = name.lower().replace("_", "-")
    if key not in TORCHVISION_DATASETS:
        raise ZooAdaptError(f"unknown dataset {name!r}; choices: {', '.join(TORCHVISION_DATASETS)}")
    import torchvision

    cls_name, train_kw, val_kw = TORCHVISION_DATASETS[key]
    cls = getattr(torchvision.datasets, cls_name)
    root = Path(root)
    try:
        train = cls(str(root), download=True, **train_kw)
        val = cls(str(root), download=True, **val_kw)
    except (OSError, RuntimeError) as e:
        reason = getattr(e, "reason", None) or str(e).splitlines()[0]
        raise ZooAdaptError(f"cannot get dataset {name} into {root}: {reason}. Offline, put the "
                            f"dataset's files there first, or use an ImageFolder with --data") from None
    classes = list(getattr(train, "classes", None) or [str(i) for i in range(_num_labels(train))])
    return Transformed(train, train_tf, classes), Transformed(val, val_tf, classes), classes


def _num_labels(ds: Any) -> int:
    """Datasets without `classes` (SVHN) keep labels as a list or numpy array under one of these."""
    for name in ("labels", "_labels", "targets"):
        labels = getattr(ds, name, None)
        if labels is not None:
            return int(max(labels)) + 1
    raise ZooAdaptError(f"cannot tell the classes of {type(ds).__name__}")


def worker_error(e: ZooAdaptError) -> ZooAdaptError:
    """A ZooAdaptError raised in a DataLoader worker comes back wrapped in the worker's
    traceback; keep just its message."""
    found = re.findall(r"ZooAdaptError: (.*)", str(e))
    return ZooAdaptError(found[-1]) if found else e
