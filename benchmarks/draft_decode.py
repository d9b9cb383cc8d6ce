"""What JPEG draft decoding saves in training, in one run: the time per image of a
training view (decode + random resized crop + flip at --image-size), decoding each JPEG
in full against at a power-of-two reduction (`images.open_image(path, min_side)`, what
zoo-adapt's loader workers do for training crops; scoring always decodes in full).

Data: scikit-image's photographs resized to each long side asked (4:3, quality 90),
written to a temporary folder. One process, one thread: the per-core cost a loader
worker pays. Rows: long side, ms per image in full, ms with draft, and their ratio.

    python benchmarks/draft_decode.py                       # 640, 1000, 2000, 4000 px at 224
    python benchmarks/draft_decode.py --sides 1000 --repeat 3 --image-size 96
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def photographs() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]


def write_jpegs(folder: Path, side: int) -> list[Path]:
    paths = []
    for i, photo in enumerate(photographs()):
        path = folder / f"{side}_{i}.jpg"
        Image.fromarray(photo).resize((side, side * 3 // 4), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def ms_per_image(paths: list[Path], transform, repeat: int) -> tuple[float, float]:
    """(full, draft): the fastest of `repeat` passes each, the two alternating so that
    a change in the machine's load touches both."""
    from zoo_adapt.data.images import open_image

    best = {False: float("inf"), True: float("inf")}
    for _ in range(repeat):
        for draft in (False, True):
            rng = random.Random(0)
            start = time.perf_counter()
            for path in paths:
                transform(open_image(path, transform.min_side if draft else None), rng)
            best[draft] = min(best[draft], (time.perf_counter() - start) / len(paths))
    return best[False] * 1000, best[True] * 1000


def main() -> None:
    from zoo_adapt.data.transforms import TrainTransform
    from zoo_adapt.zoo.backbone import Normalization

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[640, 1000, 2000, 4000])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=5, help="passes per measurement; the fastest counts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    norm = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).at(args.image_size)
    transform = TrainTransform(norm)
    print(f"training view at {args.image_size} px (decode needs a shorter side of {transform.min_side} px)")
    print(f"{'long side':>10} {'full ms':>9} {'draft ms':>9} {'full/draft':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sides:
            paths = write_jpegs(Path(tmp), side)
            full, draft = ms_per_image(paths, transform, args.repeat)
            reduced = "" if side * 3 // 4 >= 2 * transform.min_side else "  (not reduced: under twice the need)"
            print(f"{side:>10} {full:>9.1f} {draft:>9.1f} {full / draft:>10.2f}x{reduced}")


if __name__ == "__main__":
    main()
