"""Does the LR finder's suggestion land near the best rate of a small grid?

On the embedded demo (`zoo-adapt finetune` with its defaults: efficientnet_lite0,
pretrained, two-stage), runs `zoo-adapt lr-find`, then fine-tunes at each head rate of
a grid (lr_body = lr / 100 as by default) for a few epochs, and prints the grid's
validation accuracy and loss beside the suggestion, with the ratio suggestion / best.

    python benchmarks/lr_find.py [--epochs 3] [--rates 3e-4,1e-3,3e-3,1e-2,3e-2] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune, lr_find


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rates", default="3e-4,1e-3,3e-3,1e-2,3e-2")
    parser.add_argument("--out", default=None, help="where the runs go [default: a temporary folder]")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="lr-find-bench-"))
    rates = [float(r) for r in args.rates.split(",")]

    start = time.perf_counter()
    curve = lr_find(FinetuneConfig(backbone=args.backbone, out=str(out / "lr_find")), log=print)
    print(
        f"lr-find: {time.perf_counter() - start:.0f} s, suggestion {curve.suggestion:.3g}, "
        f"steepest {curve.steepest:.3g}",
        flush=True,
    )

    rows = []
    for rate in rates:
        start = time.perf_counter()
        result = finetune(
            FinetuneConfig(
                backbone=args.backbone, lr=rate, epochs=args.epochs, tta=False, out=str(out / f"lr_{rate:g}")
            ),
            log=None,
        )
        m = result.metrics
        rows.append((rate, m["val_accuracy"], m["val_loss"], m["kept_epoch"]))
        print(
            f"lr {rate:.3g}: val accuracy {m['val_accuracy']:.1%}, val loss {m['val_loss']:.3f} (epoch "
            f"{m['kept_epoch']}), {time.perf_counter() - start:.0f} s",
            flush=True,
        )

    best = max(rows, key=lambda r: (r[1], -r[2]))  # accuracy first, then the lower loss
    print()
    print(f"{'head lr':>10} {'val acc':>8} {'val loss':>9}  ({args.epochs} epochs each, demo, {args.backbone})")
    for rate, acc, loss, _ in rows:
        marks = " <- best of the grid" if rate == best[0] else ""
        print(f"{rate:>10.3g} {acc:>8.1%} {loss:>9.3f}{marks}")
    ratio = curve.suggestion / best[0]
    print(f"{'suggested':>10} {curve.suggestion:>8.3g}  (valley; steepest {curve.steepest:.3g})")
    print(
        f"suggestion / best rate = {ratio:.2f} (factor {max(ratio, 1 / ratio):.1f}; "
        f"{'within' if max(ratio, 1 / ratio) <= 3 else 'outside'} 3x); "
        f"{abs(math.log10(ratio)):.2f} decades"
    )


if __name__ == "__main__":
    main()
