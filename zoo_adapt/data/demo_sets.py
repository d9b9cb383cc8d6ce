"""Harder variants of the demo (demo.py's photographs, its train/val checkerboard of
cells): an imbalanced ImageFolder and a multi-label set with a label file; and
scikit-learn's handwritten digits as a folder of images. Used by the tests and
benchmarks/balance.py and small_data.py, and handy to try the options on."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from zoo_adapt.data.demo import _digit_masks, build_demo, patches, photographs


def build_digits(root: str | Path, size: int = 32) -> Path:
    """scikit-learn's 1 797 handwritten digits (8x8) as white on black PNGs of `size` px,
    in one ImageFolder root/<digit>/ (about 180 per digit): a second offline task."""
    root = Path(root)
    if (root / "9").is_dir():
        return root
    masks, labels = _digit_masks(size)
    for i, (mask, label) in enumerate(zip(masks, labels)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=-1)).save(folder / f"{i:04d}.png")
    return root


def build_imbalanced(root: str | Path, train_counts: dict[str, int], val_per_class: int = 20, seed: int = 0) -> Path:
    """An ImageFolder root/train, root/val whose training classes have `train_counts`
    images each (e.g. {"grass": 100, "gravel": 5}); validation is balanced."""
    root = Path(root)
    build_demo(
        root,
        train_per_class=max(train_counts.values()),
        val_per_class=val_per_class,
        seed=seed,
        classes=tuple(sorted(train_counts)),
    )
    for name, count in train_counts.items():
        for path in sorted((root / "train" / name).glob("*.png"))[count:]:
            path.unlink()
    (root / "demo.json").unlink()  # no longer the recipe it names
    return root


def build_multilabel(
    root: str | Path, classes: Sequence[str], train: int = 60, val: int = 40, size: int = 64, seed: int = 0
) -> Path:
    """Canvases of `size` px holding one or two patches of different photographs side by
    side on grey, the label of each the photographs it shows; `root/labels.csv` has
    columns path, label (joined by '|') and split. Validation patches come from other
    cells of the photographs than training ones (demo.py's checkerboard)."""
    root = Path(root)
    photos = photographs()
    rng = np.random.default_rng(seed)
    rows = []
    half = size // 2
    for split, count in (("train", train), ("val", val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            k = 1 + int(rng.random() < 0.7)
            chosen = sorted(rng.choice(len(classes), size=k, replace=False).tolist())
            canvas = Image.new("RGB", (size, size), (128, 128, 128))
            slots = rng.permutation(2)
            for slot, c in zip(slots, chosen):
                patch = patches(photos[classes[c]], split, 1, rng)[0]
                tile = Image.fromarray(patch).resize((half, half))
                top = int(rng.integers(0, size - half + 1))
                canvas.paste(tile, (int(slot) * half, top))
            name = f"{split}/{i:04d}.png"
            canvas.save(root / name)
            rows.append((name, "|".join(classes[c] for c in chosen), split))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return root
