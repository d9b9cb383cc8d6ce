"""Which backbone? Do the cheap scores of `zoo-adapt rank` pick the backbone that
fine-tunes best, and what does asking cost? Measured side by side in one run.

    python benchmarks/ranking.py [--tasks photos digits] [--epochs 3] [--out DIR]

Two offline tasks of different character:
- photos: the embedded demo (15 photographs, 20 training and 20 validation patches
  each, at the demo's 160 px): natural images, close to ImageNet;
- digits: handwritten digits (scikit-learn's) drawn on photo textures (the target
  domain of build_digit_shift, its train/ and test/ splits), 64 px, no flips: a far
  domain for ImageNet features.

On each, EfficientNet-Lite0/1/2 with their ImageNet weights and their random-init
bodies (six candidates) are ranked (`zoo_adapt.rank`), then every candidate is
fine-tuned with the same budget (finetune's defaults: two-stage, --epochs, onecycle, at
the same size; no TTA and no error analysis, which do not change the kept model).
Printed per task: each score's Kendall tau with the fine-tuned validation accuracy
(over the six, and over the three pretrained), whether the
recommendation is the fine-tuned best or within one standard error of it, and the
ranking's wall time against fine-tuning all six. Then the issue's speed check: ranking
the demo's 600 images over the three Lite backbones against one default `zoo-adapt
finetune` of the same data (analysis and TTA included, as a user runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

from zoo_adapt.data.demo import build_demo, build_digit_shift
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune
from zoo_adapt.job.rank import rank
from zoo_adapt.metrics.transferability import kendall_tau

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SCORES = ("logme", "probe_accuracy", "knn_accuracy")


def task_config(task: str, root: Path, out: Path, args) -> FinetuneConfig:
    if task == "photos":
        data = build_demo(root / "photos")
        return FinetuneConfig(data=str(data), image_size=160, out=str(out), epochs=args.epochs, analysis="off")
    data = build_digit_shift(root / "digits", size=32) / "target"
    return FinetuneConfig(data=str(data), image_size=64, hflip=False, out=str(out), epochs=args.epochs, analysis="off")


def run_task(task: str, root: Path, args) -> dict:
    config = task_config(task, root, root / task / "rank", args)
    start = time.perf_counter()
    ranking = rank(config, backbones=LITES, include_random=True, log=None)
    rank_seconds = time.perf_counter() - start
    print(
        f"\n{task}: {ranking.num_train} training and {ranking.num_val} validation images, "
        f"{len(ranking.classes)} classes"
    )
    for line in ranking.lines()[:-1]:
        print("  " + line)
    tuned = []
    for row in ranking.rows:
        run = dataclasses.replace(
            config,
            backbone=row.backbone,
            pretrained=row.pretrained,
            out=str(root / task / (row.backbone + ("" if row.pretrained else "-random"))),
        )
        tick = time.perf_counter()
        metrics = finetune(run, log=None, overwrite=True).metrics
        tuned.append({"row": row, "accuracy": metrics["val_accuracy"], "seconds": time.perf_counter() - tick})
        print(f"  fine-tuned {row.label}: {metrics['val_accuracy']:.1%} in {tuned[-1]['seconds']:.0f} s", flush=True)
    accuracy = [t["accuracy"] for t in tuned]
    pretrained = [t for t in tuned if t["row"].pretrained]
    taus = {
        score: (
            kendall_tau([getattr(t["row"], score) for t in tuned], accuracy),
            kendall_tau([getattr(t["row"], score) for t in pretrained], [t["accuracy"] for t in pretrained]),
        )
        for score in SCORES
    }
    best = max(tuned, key=lambda t: t["accuracy"])
    chosen = next(t for t in tuned if t["row"] is ranking.recommended)
    noise = max(math.sqrt(best["accuracy"] * (1 - best["accuracy"]) / ranking.num_val), 1 / ranking.num_val)
    finetune_seconds = sum(t["seconds"] for t in tuned)
    return {
        "task": task,
        "taus": taus,
        "recommended": ranking.recommended.label if ranking.recommended else None,
        "recommended_accuracy": chosen["accuracy"],
        "best": best["row"].label,
        "best_accuracy": best["accuracy"],
        "hit": chosen is best,
        "within_noise": chosen["accuracy"] >= best["accuracy"] - noise - 1e-12,
        "rank_seconds": rank_seconds,
        "finetune_seconds": finetune_seconds,
        "rows": [
            {
                "backbone": t["row"].label,
                **{score: getattr(t["row"], score) for score in SCORES},
                "finetuned_accuracy": t["accuracy"],
                "finetune_seconds": t["seconds"],
            }
            for t in tuned
        ],
    }


def speed_check(root: Path) -> dict:
    """The demo's 600 images over the three Lite backbones against one default finetune."""
    default = FinetuneConfig(out=str(root / "default"))
    start = time.perf_counter()
    ranking = rank(dataclasses.replace(default, out=str(root / "speed-rank")), backbones=LITES, log=None)
    rank_seconds = time.perf_counter() - start
    start = time.perf_counter()
    finetune(default, log=None, overwrite=True)
    return {
        "rank_seconds": rank_seconds,
        "finetune_seconds": time.perf_counter() - start,
        "feature_mb": max(r.feature_mb or 0.0 for r in ranking.rows),
        "peak_memory_mb": ranking.peak_memory_mb,
    }


def tau_text(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks", nargs="*", default=["photos", "digits"], choices=["photos", "digits"], help="none: the speed check"
    )
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of every candidate")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--no-speed-check", action="store_true")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        results = [run_task(task, root, args) for task in args.tasks]
        speed = None if args.no_speed_check else speed_check(root)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{os.environ.get('OMP_NUM_THREADS', 'default')}, load average {load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    if results:
        print(
            "\n| task | Kendall tau, six (pretrained three): LogME | probe | kNN | recommended | fine-tuned best "
            "| pick | ranking | fine-tuning all six | ratio |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in results:
            taus = [f"{tau_text(a)} ({tau_text(b)})" for a, b in r["taus"].values()]
            pick = "the best" if r["hit"] else ("within noise" if r["within_noise"] else "MISSED")
            print(
                f"| {r['task']} | {' | '.join(taus)} | {r['recommended']} {r['recommended_accuracy']:.1%} "
                f"| {r['best']} {r['best_accuracy']:.1%} | {pick} | {r['rank_seconds']:.0f} s "
                f"| {r['finetune_seconds']:.0f} s | {r['rank_seconds'] / r['finetune_seconds']:.3f} |"
            )
        hits = sum(r["hit"] for r in results)
        within = sum(r["within_noise"] for r in results)
        print(f"\nrecommendation: the fine-tuned best on {hits} of {len(results)} tasks, within noise on {within}")
    if speed:
        ratio = speed["rank_seconds"] / speed["finetune_seconds"]
        print(
            f"speed check (demo, 600 images): ranking Lite0/1/2 {speed['rank_seconds']:.0f} s, one default finetune "
            f"{speed['finetune_seconds']:.0f} s: ratio {ratio:.2f} (target: under 0.5); features held "
            f"{speed['feature_mb']:.1f} MB at most (one backbone's), process peak {speed['peak_memory_mb']:.0f} MB"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"tasks": results, "speed": speed}, indent=2) + "\n")


if __name__ == "__main__":
    main()
