"""Domain-adaptation benchmark, offline: scikit-learn's handwritten digits on black (source)
to the same kind of digits blended onto photo textures (target, after MNIST-M).

Runs source-only, DANN, MCC and train-on-target (the oracle) for several seeds and prints
target test accuracy (mean and std) and wall time. Every method uses the same backbone,
strategy, rates, schedule and epochs; only the adaptation differs. The target test set is
used only for the final score.

    python benchmarks/domain_adaptation.py                       # the README's table
    python benchmarks/domain_adaptation.py --seeds 0 --methods source-only dann --lr-body 1e-4
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from zoo_adapt.config import FinetuneConfig
from zoo_adapt.demo import build_digit_shift
from zoo_adapt.finetune import finetune
from zoo_adapt.inference import evaluate_folder

METHODS = ("source-only", "dann", "mcc", "oracle")


def run(method: str, task: Path, out: Path, seed: int, args: argparse.Namespace) -> tuple[float, float]:
    """Train one method; returns (target test accuracy, wall seconds)."""
    common = dict(backbone=args.backbone, image_size=args.image_size, epochs=args.epochs, seed=seed,
                  batch_size=args.batch_size, lr=args.lr, lr_body=args.lr_body, workers=0, tta=False,
                  optimizer=args.optimizer, weight_decay=args.weight_decay,
                  strategy="finetune", schedule="dann", keep="last", bn=args.bn, out=str(out),
                  hflip=False, crop_scale=args.crop_scale)
    if method == "oracle":  # labelled target images, same recipe
        config = FinetuneConfig(data=str(task / "target" / "train"), val_split=0.1, **common)
    elif method == "source-only":
        config = FinetuneConfig(data=str(task / "source"), **common)
    else:
        config = FinetuneConfig(data=str(task / "source"), target_data=str(task / "target" / "train"),
                                adapt=method, adapt_weight=args.adapt_weight, domain_hidden=args.domain_hidden,
                                adapt_options={k: float(v) for k, v in (o.split("=", 1) for o in args.adapt_option)}, **common)
    start = time.perf_counter()
    finetune(config, log=None, overwrite=True)
    seconds = time.perf_counter() - start
    score = evaluate_folder(out / "model.safetensors", task / "target" / "test", device="cpu")
    return score.accuracy, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2, help="head rate (the --target-data default)")
    parser.add_argument("--lr-body", type=float, default=1e-3, help="stem rate (the --target-data default)")
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--adapt-weight", type=float, default=1.0)
    parser.add_argument("--adapt-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--domain-hidden", default="1024,1024")
    parser.add_argument("--bn", default="train", choices=("train", "frozen"))
    parser.add_argument("--crop-scale", type=float, default=0.6)
    parser.add_argument("--limit", type=int, default=None, help="use at most this many digits")
    parser.add_argument("--work", type=Path, default=None, help="folder for data and runs [a temporary one]")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="zoo-adapt-da-"))
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        task = build_digit_shift(work / f"task-{seed}", seed=seed, limit=args.limit)
        for method in args.methods:
            acc, seconds = run(method, task, work / f"{method}-{seed}", seed, args)
            results[method].append((acc, seconds))
            print(f"seed {seed} {method:<12} target accuracy {acc:.1%}  ({seconds:.0f}s)", flush=True)

    print(f"\n{args.backbone} at {args.image_size}px, {args.epochs} epochs, seeds {args.seeds}")
    print("| method | target accuracy (mean ± std) | wall time per run |")
    print("| --- | --- | --- |")
    for method, runs in results.items():
        accs = [a * 100 for a, _ in runs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {method} | {statistics.mean(accs):.1f} ± {std:.1f} | "
              f"{statistics.mean(s for _, s in runs):.0f} s |")


if __name__ == "__main__":
    main()
