"""The embedded demo dataset, built at run time from photographs that ship with
scikit-image and scikit-learn: which of 15 photographs a patch comes from.

Each photo is cut into a 4x4 grid; patches for training come from one half of the cells
and patches for validation from the other half (a checkerboard), so no validation pixel
was ever seen in training. Textures (brick, grass, gravel) and scenes (astronaut,
cameraman, rocket) make it a small but honest test of transfer: pretrained features
separate the classes from a few examples, random ones do not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from zoo_adapt.errors import ZooAdaptError

# class name -> loader of an HxW or HxWx3 uint8 photograph
SKIMAGE_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
)
SKLEARN_PHOTOS = ("china", "flower")
GRID = 4
IMAGE_SIZE = 160  # patches are at most 128 px (a quarter of a 512 px photo): no need for 224
VERSION = 2  # bump when the recipe changes, so cached copies are rebuilt


def photographs() -> dict[str, np.ndarray]:
    """The source photographs as HxWx3 uint8 arrays."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        raise ZooAdaptError(
            "the demo dataset needs scikit-image and scikit-learn: pip install 'zoo-adapt[demo]'"
        ) from e
    photos = {name: getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS}
    sample = load_sample_images()
    for name, image in zip(SKLEARN_PHOTOS, sample.images):
        photos[name] = image
    return {name: _rgb(image) for name, image in photos.items()}


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def _cells(shape: tuple[int, ...], split: str) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the grid cells of one split (checkerboard)."""
    h, w = shape[0] // GRID, shape[1] // GRID
    parity = 0 if split == "train" else 1
    return [(i * h, j * w, h, w) for i in range(GRID) for j in range(GRID) if (i + j) % 2 == parity]


def patches(
    image: np.ndarray, split: str, count: int, rng: np.random.Generator, min_frac: float = 0.3
) -> list[np.ndarray]:
    """`count` random square patches, each inside one cell of `split`."""
    cells = _cells(image.shape, split)
    out = []
    for n in range(count):
        top, left, h, w = cells[n % len(cells)] if n < len(cells) else cells[rng.integers(len(cells))]
        side = int(min(h, w) * rng.uniform(min_frac, 1.0))
        y = top + int(rng.integers(0, h - side + 1))
        x = left + int(rng.integers(0, w - side + 1))
        out.append(image[y : y + side, x : x + side])
    return out


def build_demo(
    root: str | Path,
    train_per_class: int = 20,
    val_per_class: int = 20,
    seed: int = 0,
    classes: tuple[str, ...] | None = None,
) -> Path:
    """Write the demo as an ImageFolder tree: root/train/<class>/*.png, root/val/<class>/*.png.
    Rebuilt only when the recipe or its arguments change."""
    root = Path(root)
    recipe = {
        "version": VERSION,
        "train": train_per_class,
        "val": val_per_class,
        "seed": seed,
        "classes": list(classes) if classes else None,
    }
    stamp = root / "demo.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe:
        return root
    photos = photographs()
    chosen = classes or tuple(sorted(photos))
    unknown = sorted(set(chosen) - set(photos))
    if unknown:
        raise ZooAdaptError(f"the demo has no photograph {unknown[0]!r} (choices: {', '.join(sorted(photos))})")
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for name in chosen:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob("*.png"):
                old.unlink()
            for i, patch in enumerate(patches(photos[name], split, count, rng)):
                Image.fromarray(patch).save(folder / f"{name}_{i:03d}.png")
    stamp.write_text(json.dumps(recipe))
    return root


# Colour photographs whose textures the target digits are blended onto (after MNIST-M).
TEXTURE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "china",
    "flower",
)


def _digit_masks(size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1 797 handwritten digits (8x8, 0..16) as size x size masks in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ZooAdaptError("the digit datasets need scikit-learn: pip install 'zoo-adapt[demo]'") from e
    digits = load_digits()
    masks = np.stack(
        [
            np.asarray(
                Image.fromarray((d / 16 * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR),
                dtype=np.float32,
            )
            / 255
            for d in digits.images
        ]
    )
    return masks, digits.target


def digit_on_photo(mask: np.ndarray, photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MNIST-M's recipe: |texture - digit|, the texture a random crop of a colour photograph."""
    size = mask.shape[0]
    side = int(rng.integers(size, max(size + 1, min(photo.shape[:2]) // 3)))
    y, x = int(rng.integers(0, photo.shape[0] - side + 1)), int(rng.integers(0, photo.shape[1] - side + 1))
    patch = np.asarray(
        Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    return np.abs(patch - mask[..., None] * 255).astype(np.uint8)


def build_digit_shift(root: str | Path, size: int = 32, seed: int = 0, limit: int | None = None) -> Path:
    """A domain-shift task: digits on black (source) to digits on photo textures (target).

    Writes root/source/{train,val}/<digit>/, root/target/train/<digit>/ (for adaptation its
    labels are never read; the train-on-target oracle uses them) and root/target/test/<digit>/.
    Source and target use disjoint halves of the digits. `limit`: at most this many digits
    (for fast tests)."""
    root = Path(root)
    recipe = {"version": VERSION, "size": size, "seed": seed, "limit": limit, "kind": "digit-shift"}
    stamp = root / "digit_shift.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe:
        return root
    masks, labels = _digit_masks(size)
    photos = photographs()
    textures = [photos[name] for name in TEXTURE_PHOTOS]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))[:limit]
    half = len(order) // 2
    source, target = order[:half], order[half:]
    splits = {
        ("source", "train"): source[: int(0.8 * len(source))],
        ("source", "val"): source[int(0.8 * len(source)) :],
        ("target", "train"): target[: int(0.6 * len(target))],
        ("target", "test"): target[int(0.6 * len(target)) :],
    }
    for (domain, split), indices in splits.items():
        for i in indices:
            folder = root / domain / split / str(labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            if domain == "source":
                image = np.repeat((masks[i] * 255).astype(np.uint8)[..., None], 3, axis=-1)
            else:
                image = digit_on_photo(masks[i], textures[int(rng.integers(len(textures)))], rng)
            Image.fromarray(image).save(folder / f"{domain}_{i:04d}.png")
    stamp.write_text(json.dumps(recipe))
    return root


# Ten photographs whose crops are the classes of the photo-shift task.
PHOTO_SHIFT_CLASSES = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "flower",
    "grass",
    "gravel",
    "rocket",
)
TINT = np.array([0.45, 0.85, 1.0], dtype=np.float32)  # a strong blue-green cast


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The target domain of the photo-shift task: desaturated, under a strong colour tint,
    dimmed, blurred and noisy (each amount drawn per image)."""
    x = image.astype(np.float32) / 255
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = 0.2 * x + 0.8 * grey[..., None]
    x = x * TINT * rng.uniform(0.45, 0.65)
    blurred = Image.fromarray((x * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.6)))
    x = np.asarray(blurred, dtype=np.float32) / 255 + rng.normal(0, rng.uniform(0.03, 0.06), x.shape)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def build_photo_shift(
    root: str | Path,
    size: int = 64,
    seed: int = 0,
    per_class: tuple[int, int, int, int] = (80, 20, 50, 50),
    classes: tuple[str, ...] = PHOTO_SHIFT_CLASSES,
) -> Path:
    """A domain-shift task: which of ten photographs a crop comes from, clean (source) to
    degraded (target, `degrade`). Crops are squares of 30-100% of a 4x4 grid cell, resized
    to `size`; source crops come from one half of the cells (a checkerboard), target
    training crops from half of the others and target test crops from the rest, so no
    two splits share a pixel. `per_class`: source train, source val, target train and
    target test images per class. Writes the same tree as `build_digit_shift`."""
    root = Path(root)
    recipe = {
        "version": VERSION,
        "size": size,
        "seed": seed,
        "per_class": list(per_class),
        "classes": list(classes),
        "kind": "photo-shift",
    }
    stamp = root / "photo_shift.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe:
        return root
    photos = photographs()
    rng = np.random.default_rng(seed)
    n_train, n_val, n_target, n_test = per_class
    for name in classes:
        photo = photos[name]
        other = _cells(photo.shape, "val")
        source = patches(photo, "train", n_train + n_val, rng)
        target = [_patch_in(photo, other[k % len(other)], rng) for k in range(0, 2 * n_target, 2)]
        test = [_patch_in(photo, other[k % len(other)], rng) for k in range(1, 2 * n_test, 2)]
        parts = {
            ("source", "train"): source[:n_train],
            ("source", "val"): source[n_train:],
            ("target", "train"): target,
            ("target", "test"): test,
        }
        for (domain, split), crops in parts.items():
            folder = root / domain / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, crop in enumerate(crops):
                image = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC))
                if domain == "target":
                    image = degrade(image, rng)
                Image.fromarray(image).save(folder / f"{split}_{name}_{i:03d}.png")
    stamp.write_text(json.dumps(recipe))
    return root


def _patch_in(
    image: np.ndarray, cell: tuple[int, int, int, int], rng: np.random.Generator, min_frac: float = 0.3
) -> np.ndarray:
    top, left, h, w = cell
    side = int(min(h, w) * rng.uniform(min_frac, 1.0))
    y, x = top + int(rng.integers(0, h - side + 1)), left + int(rng.integers(0, w - side + 1))
    return image[y : y + side, x : x + side]
