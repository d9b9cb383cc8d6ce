"""The effect of --balance and --select-metric on an imbalanced set (1:20), side by
side: balanced accuracy on a balanced validation set with and without balancing.

    python benchmarks/balance.py [--epochs 8] [--size 64] [--seeds 0 1 2]

The data: two (or more) demo photographs, the rare one with 1/20 of the common one's
training images (zoo_adapt.data.demo_sets.build_imbalanced); EfficientNet-Lite0, pretrained,
linear probe on cached features (the head is what balancing acts on)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from zoo_adapt.data.demo_sets import build_imbalanced
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune

VARIANTS = (("none", "accuracy"), ("sampler", "balanced_accuracy"), ("loss", "balanced_accuracy"))


def run(root: Path, out: Path, balance: str, select: str, seed: int, args) -> dict:
    config = FinetuneConfig(
        data=str(root),
        out=str(out),
        backbone="efficientnet_lite0",
        image_size=args.size,
        strategy=args.strategy,
        epochs=args.epochs,
        batch_size=16,
        balance=balance,
        select_metric=select,
        seed=seed,
        tta=False,
        lr=args.lr,
    )
    return finetune(config, log=None, overwrite=True).metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--common", nargs="+", default=["grass", "gravel"])
    parser.add_argument("--rare", default="brick")
    parser.add_argument("--train", type=int, default=60, help="training images of each common class")
    parser.add_argument("--ratio", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--strategy", default="linear-probe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    counts = {name: args.train for name in args.common}
    counts[args.rare] = max(1, args.train // args.ratio)
    with tempfile.TemporaryDirectory() as tmp:
        root = build_imbalanced(Path(tmp) / "data", counts, val_per_class=20)
        print(
            f"training counts {counts}; validation 20 per class; {args.strategy}, {args.epochs} epochs, {args.size}px"
        )
        print(
            f"{'balance':>8} {'select':>18} | "
            + " ".join(f"seed {s}: bal.acc  acc  rare recall" for s in args.seeds)
            + " | mean bal.acc"
        )
        means = {}
        for balance, select in VARIANTS:
            cells, scores = [], []
            for seed in args.seeds:
                m = run(root, Path(tmp) / f"{balance}-{seed}", balance, select, seed, args)
                scores.append(m["val_balanced_accuracy"])
                cells.append(
                    f"{m['val_balanced_accuracy']:.3f} {m['val_accuracy']:.3f} {m['per_class_recall'][args.rare]:.3f}"
                )
            means[balance] = sum(scores) / len(scores)
            print(f"{balance:>8} {select:>18} | " + "   ".join(cells) + f" | {means[balance]:.3f}")
        for balance in ("sampler", "loss"):
            print(
                f"{balance} / none, mean balanced accuracy: {means[balance] / means['none']:.2f}x "
                f"({means[balance] - means['none']:+.3f})"
            )


if __name__ == "__main__":
    main()
