"""Labelled images in: ImageFolder trees (with or without train/val subfolders),
torchvision datasets by name, and the embedded demo. Problems with the data are
ZooAdaptErrors that name the folder or file."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image
from torch.utils.data import Dataset

from zoo_adapt.data.images import check_image, check_images, open_image, to_mode  # noqa: F401 (decoding: images.py)
from zoo_adapt.data.paths import (  # noqa: F401 (names found from paths alone live in paths.py)
    IMAGE_SUFFIXES,
    TRAIN_DIRS,
    VAL_DIRS,
    Listing,
    class_folders,
    image_files,
    labelled_folder,
    list_images,
    split_dirs,
)
from zoo_adapt.errors import ZooAdaptError, quote

# the rule for unreadable images in large folders (see `checked`)
SKIP_UNREADABLE_FROM = 1000
MAX_SKIPPED_FRACTION = 0.01
log = logging.getLogger("zoo_adapt")


@dataclass
class Samples:
    """(path, label) pairs and the class names in index order. `skipped`: unreadable
    images left out by scan_folder's rule for large folders, as (path, reason).
    `multi_label`: each label is a tuple of class indices (label_file.py)."""

    items: list[tuple[Path, Any]]
    classes: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    multi_label: bool = False

    def labels(self) -> list:
        return [label for _, label in self.items]


def scan_folder(root: str | Path, classes: Sequence[str] | None = None, skip_unreadable: bool | None = None) -> Samples:
    """An ImageFolder: one subfolder per class. With `classes`, labels follow that order
    and a folder of a class outside it is an error.

    Class folders may be links; one that is (a link to) the folder itself or one of its
    parents, or the same folder as another class, or inside another class, is an
    error, as is one image file in two classes. Every image is checked at once
    (`check_images`); unreadable ones are an error, except under the rule for large
    folders (see `checked`), or always or never with `skip_unreadable` True or False."""
    root = Path(root)
    if not root.exists():
        raise ZooAdaptError(f"data folder not found: {root}")
    if not root.is_dir():
        raise ZooAdaptError(f"not a folder: {root}")
    found = class_folders(root)
    if not found:
        loose = image_files(root)
        raise ZooAdaptError(
            f"{root} has no class subfolders"
            + (
                f" (it holds {len(loose)} images directly; put each class in its own subfolder)"
                if loose
                else " and no images; expected <class>/<image> files"
            )
        )
    names = list(classes) if classes is not None else found
    unknown = [c for c in found if c not in names]
    if unknown:
        raise ZooAdaptError(
            f"{root} has classes the model does not know: {', '.join(unknown[:5])}"
            f" (model classes: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
        )
    _check_class_folders(root, found)
    index = {name: i for i, name in enumerate(names)}
    items: list[tuple[Path, Any]] = []
    owner: dict[str, Path] = {}
    passed_over = Listing()
    for name in found:
        listing = list_images(root / name)
        passed_over.unsupported.update(listing.unsupported)
        if not listing.files and classes is None:
            raise ZooAdaptError(f"class folder {root / name} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
        for path, real in listing.files:
            if real in owner:
                raise ZooAdaptError(
                    f"{owner[real]} and {path} are the same file ({real}) in two classes; keep it in one"
                )
            owner[real] = path
            items.append((path, index[name]))
    if not items:
        raise ZooAdaptError(f"{root} holds no images")
    passed_over.report(root)
    bad = checked([path for path, _ in items], str(root), skip_unreadable)
    if bad:
        dropped = {path for path, _ in bad}
        items = [item for item in items if item[0] not in dropped]
    return Samples(items, names, bad)


def checked(paths: Sequence[Path], where: str, skip: bool | None = None) -> list[tuple[Path, str]]:
    """Check every image (`check_images`) and return the unreadable ones to leave out,
    or raise. The rule, when `skip` is None: in a folder of fewer than
    SKIP_UNREADABLE_FROM (1000) images, an unreadable image is an error (it is one to
    fix by hand); from 1000 images on, unreadable images are left out with a warning
    naming them, as long as they are at most MAX_SKIPPED_FRACTION (1%) of the images
    (more means a wrong folder or a damaged disk, not a few bad downloads). With `skip`
    True they are always left out, with False never; all images bad is always an error."""
    bad = check_images(paths)
    if not bad:
        return []
    if skip is None:
        skip = len(paths) >= SKIP_UNREADABLE_FROM and len(bad) <= MAX_SKIPPED_FRACTION * len(paths)
    if not skip or len(bad) == len(paths):
        more = f" ({len(bad) - 1} more unreadable images in {where})" if len(bad) > 1 else ""
        raise ZooAdaptError(bad[0][1] + more)
    names = ", ".join(str(path) for path, _ in bad[:10]) + (", ..." if len(bad) > 10 else "")
    log.warning(f"skipped {len(bad)} unreadable image(s) of {len(paths)} in {where}: {names}")
    return bad


def unlabelled_images(root: str | Path) -> Samples:
    """Unlabelled images at any depth below a folder (a target domain's). Ordered by
    file name (then size), never by folder, so folder names, which may encode labels,
    change nothing."""
    root = Path(root)
    if root.is_file():
        raise ZooAdaptError(f"--target-data takes a folder of images; {root} is a file")
    if not root.is_dir():
        raise ZooAdaptError(f"target folder not found: {root}")
    files = image_files(root, report=True)
    if not files:
        raise ZooAdaptError(f"target folder {root} holds no images")
    bad = checked(files, f"target folder {root}")
    dropped = {path for path, _ in bad}
    files = sorted((f for f in files if f not in dropped), key=lambda p: (p.name, p.stat().st_size, str(p)))
    return Samples([(f, -1) for f in files], [], bad)


def _check_class_folders(root: Path, names: list[str]) -> None:
    """Refuse class folders that would count images twice or under the wrong class."""
    top = root.resolve()
    real = {name: (root / name).resolve() for name in names}
    by_real: dict[Path, str] = {}
    for name in names:
        where = real[name]
        if where == top or where in top.parents:
            raise ZooAdaptError(
                f"class folder {root / name} is a link to {where}, which holds the data "
                f"folder {root} itself; remove the link"
            )
        if where in by_real:
            raise ZooAdaptError(
                f"class folders {root / by_real[where]} and {root / name} are the same folder ({where}); keep one"
            )
        by_real[where] = name
    for name in names:
        outer = next((by_real[p] for p in real[name].parents if p in by_real), None)
        if outer is not None:
            raise ZooAdaptError(
                f"class folder {root / name} ({real[name]}) is inside class folder "
                f"{root / outer}; its images would count in both"
            )


def _random_split(samples, fraction: float, seed: int):
    """Multi-label data cannot be stratified by one label: a seeded random `fraction`."""
    items = list(samples.items)
    random.Random(seed).shuffle(items)
    n_val = min(len(items) - 1, max(1, round(len(items) * fraction)))
    return (
        Samples(sorted(items[n_val:]), samples.classes, multi_label=True),
        Samples(sorted(items[:n_val]), samples.classes, multi_label=True),
    )


def stratified_split(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples]:
    """Per class, a seeded `fraction` of the images (at least one where a class has two)."""
    if not 0 < fraction < 1:
        raise ZooAdaptError(f"--val-split must be between 0 and 1, not {fraction}")
    if samples.multi_label:
        return _random_split(samples, fraction, seed)
    rng = random.Random(seed)
    train, val = [], []
    for label in range(len(samples.classes)):
        items = [s for s in samples.items if s[1] == label]
        rng.shuffle(items)
        n_val = min(len(items) - 1, max(1, round(len(items) * fraction))) if len(items) > 1 else 0
        val += items[:n_val]
        train += items[n_val:]
    return Samples(sorted(train), samples.classes, samples.skipped), Samples(sorted(val), samples.classes)


def stratified_folds(labels: Sequence, folds: int, seed: int, num_classes: int) -> list[int]:
    """Each image's fold (0..folds-1), stratified and seeded: the images of each class,
    shuffled, are dealt to the folds in turn, each class starting where the one before
    stopped, so every class is spread as evenly as it can be and the folds' sizes differ
    by at most one. Multi-label images are stratified by their rarest label (the label
    with the fewest training images; images without labels form a group of their own),
    a simpler rule than iterative stratification that still spreads every rare label."""
    counts = class_counts(labels, num_classes)

    def group(label) -> int:
        if isinstance(label, tuple):
            return min(label, key=lambda c: (counts[c], c)) if label else num_classes
        return int(label)

    by_group: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_group.setdefault(group(label), []).append(i)
    rng = random.Random(seed)
    assignment = [0] * len(labels)
    turn = 0
    for g in sorted(by_group):
        members = by_group[g]
        rng.shuffle(members)
        for i in members:
            assignment[i] = turn % folds
            turn += 1
    return assignment


def subset(samples: Samples, indices: Sequence[int]) -> Samples:
    """The samples at `indices`, in that order."""
    return Samples([samples.items[i] for i in indices], samples.classes, multi_label=samples.multi_label)


class ImageSource(Protocol):
    """Labelled images as the batch sources read them: an ImageDataset (files), or a
    torchvision dataset wrapped by Transformed."""

    classes: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, key: Any) -> Any: ...

    def with_transform(self, transform: Callable) -> ImageSource: ...

    def raw(self, i: int, min_side: int | None = None, mode: str = "RGB") -> tuple[Image.Image, Any]: ...


class ImageDataset(Dataset):
    """Images from paths with a transform; decoding errors name the file."""

    def __init__(self, samples: Samples, transform: Callable | None = None):
        self.samples, self.transform, self.classes = samples, transform, samples.classes

    def __len__(self) -> int:
        return len(self.samples.items)

    def with_transform(self, transform: Callable | None) -> ImageDataset:
        return ImageDataset(self.samples, transform)

    def raw(self, i: int, min_side: int | None = None, mode: str = "RGB") -> tuple[Image.Image, Any]:
        """(the decoded PIL image, label), before the transform; `min_side`: the shorter
        side needed (large JPEGs decode faster below their full size); `mode`: RGB, or L
        for a one-channel model (the transform's `image_mode`). A multi-label
        image's label is a 0/1 float vector over the classes."""
        path, label = self.samples.items[i]
        if self.samples.multi_label:
            label = multi_hot(label, len(self.classes))
        return open_image(path, min_side, mode), label

    def __getitem__(self, key):
        """`key`: an index, or (index, seed) for a transform whose randomness must be the
        image's own (see `pipeline.EpochOrder`)."""
        i, rng = _key(key)
        image, label = self.raw(
            i, getattr(self.transform, "min_side", None), getattr(self.transform, "image_mode", "RGB")
        )
        return (self.transform(image, rng) if self.transform else image), label


class Transformed(Dataset):
    """Another dataset's (image, label) pairs through a transform (for torchvision datasets)."""

    def __init__(self, base: Any, transform: Callable | None, classes: list[str]):
        self.base, self.transform, self.classes = base, transform, classes

    def __len__(self) -> int:
        return len(self.base)

    def with_transform(self, transform: Callable) -> Transformed:
        return Transformed(self.base, transform, self.classes)

    def raw(self, i: int, min_side: int | None = None, mode: str = "RGB") -> tuple[Image.Image, Any]:
        image, label = self.base[i]
        return to_mode(image, mode), int(label)

    def __getitem__(self, key):
        i, rng = _key(key)
        image, label = self.raw(i)
        return (self.transform(image, rng) if self.transform else image), label


def multi_hot(ids, num_classes: int):
    out = torch.zeros(num_classes)
    out[list(ids)] = 1.0
    return out


def dataset_labels(dataset) -> list:
    """The label of every sample without decoding an image: class indices, or tuples of
    them for multi-label data."""
    if isinstance(dataset, ImageDataset):
        return dataset.samples.labels()
    base = getattr(dataset, "base", dataset)
    for name in ("targets", "labels", "_labels"):
        labels = getattr(base, name, None)
        if labels is not None:
            return [int(label) for label in labels]
    return [int(dataset.raw(i)[1]) for i in range(len(dataset))]


def class_counts(labels: Sequence, num_classes: int) -> list[int]:
    """Images per class (multi-label: images carrying each class)."""
    counts = [0] * num_classes
    for label in labels:
        for c in label if isinstance(label, tuple) else (label,):
            counts[c] += 1
    return counts


def _key(key) -> tuple[int, random.Random | None]:
    if isinstance(key, tuple):
        return key[0], random.Random(key[1])
    return key, None


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


def torchvision_dataset(name: str, root: str | Path, train_tf: Callable | None, val_tf: Callable | None):
    """(train, val, classes) of a torchvision dataset, downloading into `root` when online."""
    key = name.lower().replace("_", "-")
    if key not in TORCHVISION_DATASETS:
        raise ZooAdaptError(f"unknown dataset {quote(name)}; choices: {', '.join(TORCHVISION_DATASETS)}")
    import torchvision

    cls_name, train_kw, val_kw = TORCHVISION_DATASETS[key]
    cls = getattr(torchvision.datasets, cls_name)
    root = Path(root)
    try:
        train = cls(str(root), download=True, **train_kw)
        val = cls(str(root), download=True, **val_kw)
    except (OSError, RuntimeError) as e:
        reason = getattr(e, "reason", None) or str(e).splitlines()[0]
        raise ZooAdaptError(
            f"cannot get dataset {name} into {root}: {reason}. Offline, put the "
            f"dataset's files there first, or use an ImageFolder with --data"
        ) from None
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
