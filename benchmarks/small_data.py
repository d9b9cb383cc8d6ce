"""How sure is a number measured on few images? Four tables, side by side, on two
offline tasks (the demo's photographs; scikit-learn's handwritten digits):

1. intervals: how wide the 95% intervals are on 20, 50 and 200 validation images, and
   how often they hold the accuracy (balanced accuracy) of the same model on a large
   held-out set (random subsets of it, `--draws` per size);
2. estimates: a single 80/20 split against 5-fold cross-validation (pooled out-of-fold
   predictions), each against the accuracy of the model it ships on the large held-out
   set, over seeds: which is closer;
3. calibration: the expected calibration error and NLL on the large held-out set
   before and after the temperature the cross-validation fitted on its out-of-fold
   predictions;
4. cost: the K-fold linear probe (features extracted once, K heads and the refit)
   against one probe run on the same images, on the pools above and on a larger digits
   pool (`--cost-per-class`), where the extraction outweighs each run's fixed cost
   (building the model, a checkpoint and an export per epoch, the plots).

    python benchmarks/small_data.py [--seeds 0 1 2] [--tasks demo digits] [--per-class 10]

EfficientNet-Lite0 (pretrained, bundled weights), linear probe on cached features, 64
px, no TTA, no error analysis. Each seed draws another training pool (per-class
images) and another held-out set."""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from zoo_adapt.data.demo import build_demo
from zoo_adapt.data.demo_sets import build_digits
from zoo_adapt.data.folders import ImageDataset, scan_folder
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune
from zoo_adapt.metrics import calibration
from zoo_adapt.metrics import intervals as ci
from zoo_adapt.ship.export import read_card
from zoo_adapt.ship.inference import evaluate_images

SIZES = (20, 50, 200)


def pools(task: str, seed: int, per_class: int, tmp: Path, held_per_class: int = 30) -> tuple[Path, Path]:
    """(a training pool of `per_class` images per class, a held-out set of
    `held_per_class` per class, large against the validation sets measured)."""
    if task == "demo":
        root = build_demo(tmp / f"demo-{seed}", train_per_class=per_class, val_per_class=held_per_class, seed=seed)
        return root / "train", root / "val"
    everything = build_digits(tmp / "digits")
    rng = random.Random(seed)
    pool, held = tmp / f"digits-{seed}" / "pool", tmp / f"digits-{seed}" / "held"
    for digit in sorted(p.name for p in everything.iterdir()):
        files = sorted((everything / digit).glob("*.png"))
        rng.shuffle(files)
        for where, chosen in ((pool, files[:per_class]), (held, files[per_class : per_class + held_per_class])):
            (where / digit).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copy(f, where / digit / f.name)
    return pool, held


def config(pool: Path, out: Path, seed: int, args, **extra) -> FinetuneConfig:
    return FinetuneConfig(
        data=str(pool),
        out=str(out),
        backbone="efficientnet_lite0",
        image_size=args.size,
        strategy="linear-probe",
        epochs=args.epochs,
        lr=args.lr,
        batch_size=32,
        seed=seed,
        tta=False,
        analysis="off",
        workers=0,
        **extra,
    )


def timed(cfg: FinetuneConfig):
    start = time.perf_counter()
    result = finetune(cfg, log=None, overwrite=True)
    return result, time.perf_counter() - start


def interval_table(task: str, held, truth_acc: float, truth_bal: float, draws: int) -> list[str]:
    """Random subsets of the held-out evaluation: interval widths and coverage."""
    y, p = np.asarray(held.labels), np.asarray(held.predictions)
    rng = np.random.default_rng(0)
    rows = []
    for n in SIZES:
        if n > len(y):
            continue
        widths, held_acc, bal_widths, held_bal = [], 0, [], 0
        for _ in range(draws):
            idx = rng.choice(len(y), n, replace=False)
            right = int((y[idx] == p[idx]).sum())
            low, high = ci.wilson(right, n) or (0.0, 0.0)
            widths.append(high - low)
            held_acc += low <= truth_acc <= high
            boot = ci.single_label_bootstrap(y[idx], p[idx], len(held.classes), count=500)["balanced_accuracy"]
            if boot:
                bal_widths.append(boot[1] - boot[0])
                held_bal += boot[0] <= truth_bal <= boot[1]
        rows.append(
            f"| {task} | {n} | {100 * np.mean(widths):.1f} points | {held_acc / draws:.0%} | "
            f"{100 * np.mean(bal_widths):.1f} points | {held_bal / draws:.0%} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", nargs="+", default=["demo", "digits"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, default=10, help="training images per class in each pool")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--draws", type=int, default=200, help="random subsets per size in the interval table")
    parser.add_argument("--held-per-class", type=int, default=30, help="held-out images per class (the truth)")
    parser.add_argument("--cost-per-class", type=int, default=40, help="digits per class in the larger cost pool")
    args = parser.parse_args()
    intervals, estimates, calibrated, costs = [], [], [], []
    closer = {task: [0, 0] for task in args.tasks}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for task in args.tasks:
            for seed in args.seeds:
                pool, large = pools(task, seed, args.per_class, tmp, args.held_per_class)
                held_images = ImageDataset(scan_folder(large))
                single, single_s = timed(config(pool, tmp / "single", seed, args, val_split=0.2))
                truth_single = evaluate_images(single.out / "model.safetensors", held_images, "cpu", workers=0)
                folded, folded_s = timed(config(pool, tmp / "folds", seed, args, folds=args.folds))
                refit = folded.out / "model.safetensors"
                truth_cv = evaluate_images(refit, held_images, "cpu", workers=0, keep_scores=True)
                m, s = folded.metrics, single.metrics
                err_single = abs(s["val_accuracy"] - truth_single.accuracy)
                err_cv = abs(m["val_accuracy"] - truth_cv.accuracy)
                closer[task][0 if err_cv < err_single else 1] += 1
                estimates.append(
                    f"| {task} | {seed} | {s['val_accuracy']:.1%} on {s['num_val']} | {truth_single.accuracy:.1%} | "
                    f"{100 * err_single:.1f} | {m['val_accuracy']:.1%} on {m['num_val']} | {truth_cv.accuracy:.1%} | "
                    f"{100 * err_cv:.1f} |"
                )
                t = read_card(refit)[0].temperature
                y = truth_cv.labels
                before = calibration.ece(truth_cv.scores, y, 1 / t), calibration.nll(truth_cv.scores, y, 1 / t)
                after = calibration.ece(truth_cv.scores, y), calibration.nll(truth_cv.scores, y)
                calibrated.append(
                    f"| {task} | {seed} | {t:.2f} | {before[0]:.1%} -> {after[0]:.1%} | "
                    f"{before[1]:.3f} -> {after[1]:.3f} |"
                )
                costs.append((task, single_s, folded_s))
                if seed == args.seeds[0]:
                    intervals += interval_table(
                        task,
                        truth_single,
                        truth_single.accuracy,
                        truth_single.balanced_accuracy or 0.0,
                        args.draws,
                    )
                print(f"{task} seed {seed}: single {single_s:.0f} s, {args.folds}-fold {folded_s:.0f} s", flush=True)
        if args.cost_per_class:
            pool, _ = pools("digits", 100, args.cost_per_class, tmp, 0)
            _, single_s = timed(config(pool, tmp / "single", 0, args, val_split=0.2))
            _, folded_s = timed(config(pool, tmp / "folds", 0, args, folds=args.folds))
            costs.append((f"digits, {10 * args.cost_per_class} images", single_s, folded_s))
    print(
        f"\nEfficientNet-Lite0 linear probe, {args.size}px, {args.epochs} epochs, {args.per_class} training images "
        f"per class, seeds {args.seeds}"
    )
    print("\n1. 95% intervals on n validation images (random subsets of the large held-out set)\n")
    print(
        "| task | n | accuracy interval (Wilson), mean width | held the large-set accuracy | balanced accuracy "
        "interval (bootstrap), mean width | held the large-set value |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(intervals))
    print(
        f"\n2. Estimates against the shipped model's accuracy on the large held-out set (single 80/20 split vs "
        f"{args.folds}-fold)\n"
    )
    print(
        "| task | seed | single split | its model, held out | error (points) | "
        f"{args.folds}-fold (pooled OOF) | refit, held out | error (points) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(estimates))
    for task, (cv, single) in closer.items():
        print(f"{task}: {args.folds}-fold closer in {cv} of {cv + single} seeds")
    print(
        "\n3. Calibration of the refit on the large held-out set (temperature fitted on the out-of-fold predictions)\n"
    )
    print("| task | seed | temperature | ECE before -> after | NLL before -> after |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(calibrated))
    print(f"\n4. Cost: one probe run against the {args.folds}-fold probe (features once, {args.folds} heads, refit)\n")
    print("| task | one probe run | K-fold probe | ratio |")
    print("| --- | --- | --- | --- |")
    for task in dict.fromkeys(t for t, _, _ in costs):
        one = [s for t, s, _ in costs if t == task]
        many = [f for t, _, f in costs if t == task]
        print(f"| {task} | {np.mean(one):.1f} s | {np.mean(many):.1f} s | {np.mean(many) / np.mean(one):.2f}x |")


if __name__ == "__main__":
    main()
