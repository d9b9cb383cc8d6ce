"""What a fine-tuning run tells its user and records about itself: warnings before it
starts (defaults that do something unexpected, imbalanced classes), the recipes line,
config.toml's notes, metrics.json's validation block (each figure with its 95%
interval), the calibration, and which epoch was kept and why (with a paired test of its
lead over the last)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo_adapt.data.augment import describe
from zoo_adapt.engine import processes
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.metrics import calibration
from zoo_adapt.metrics import intervals as ci
from zoo_adapt.metrics.scores import Evaluation

if TYPE_CHECKING:
    from zoo_adapt.engine.loop import Loop
    from zoo_adapt.job.inputs import Datasets

TIE_IMAGES = 2  # epochs this many validation images (or fewer) apart count as tied: the later is kept


def start_warnings(c: FinetuneConfig, stored: dict[str, Any] | None) -> list[str]:
    """Defaults that silently do something else than a user expects on small runs."""
    out = []
    if c.strategy == "two-stage" and c.epochs <= c.head_epochs:
        out.append(
            f"two-stage with --epochs {c.epochs} and --head-epochs {c.head_epochs} trains the head alone: "
            f"the body never unfreezes (give --epochs {c.head_epochs + 1} or more, or --strategy linear-probe)"
        )
    planned = (stored or {}).get("config", {}).get("epochs")
    if planned is not None and c.epochs > planned:
        out.append(
            f"--epochs {c.epochs} extends a run planned for {planned}: the learning-rate schedule of the last "
            "stage is stretched over the new length, so the rate rises again from where it was; for a clean "
            "schedule start a new run"
        )
    return out


def recipes_line(c: FinetuneConfig) -> str:
    """The training recipes switched on, in one line."""
    parts = [describe(c.augment, c.color_jitter, c.random_erase, c.mixup, c.cutmix)]
    parts += [f"EMA of the weights (decay {c.ema:g})"] if c.ema else []
    parts += ["random vertical flips"] if c.vflip else []
    parts += ["random quarter turns"] if c.rot90 else []
    parts += (
        [
            f"gradient accumulation over {c.accumulate} batches (effective batch "
            f"{c.accumulate * c.batch_size * processes.launched().world})"
        ]
        if c.accumulate > 1
        else []
    )
    parts += [f"early stop after {c.early_stop} epochs without improvement"] if c.early_stop else []
    return "; ".join(p for p in parts if p)


# Evaluation.intervals' figures -> metrics.json's names (each beside its figure, `<figure>_interval`)
INTERVAL_NAMES = {
    "accuracy": "val_accuracy",
    "top5": "val_top5",
    "balanced_accuracy": "val_balanced_accuracy",
    "macro_f1": "val_macro_f1",
    "micro_f1": "val_micro_f1",
    "map": "val_map",
    "per_class_recall": "per_class_recall",
}


def validation_metrics(final: Evaluation) -> dict[str, Any]:
    """What metrics.json holds of the kept model's validation."""
    out: dict[str, Any] = {
        "val_accuracy": final.accuracy,
        "val_loss": final.loss,
        "val_macro_f1": final.macro_f1,
        "per_class_precision": final.precision,
        "per_class_recall": final.recall,
        "per_class_f1": final.f1,
    }
    if final.multi_label:
        out.update(
            {
                "val_map": final.map,
                "val_micro_f1": final.micro_f1,
                "per_class_ap": final.per_class,
                "thresholds": final.thresholds,
            }
        )
    else:
        out.update(
            {
                "val_top5": final.top5,
                "val_balanced_accuracy": final.balanced_accuracy,
                "per_class_accuracy": final.per_class,
                "confusion_matrix": final.confusion,
            }
        )
    out.update({f"{INTERVAL_NAMES[k]}_interval": v for k, v in final.intervals.items() if k in INTERVAL_NAMES})
    return out


def tta_metrics(final: Evaluation, tta: Evaluation) -> dict[str, Any]:
    """TTA's figures, and TTA against no TTA on the same images (paired)."""
    out: dict[str, Any] = {"val_accuracy_tta": tta.accuracy, "val_top5_tta": tta.top5}
    out["val_accuracy_tta_interval"] = tta.intervals.get("accuracy")
    if tta.multi_label:
        out["val_map_tta"] = tta.map
    else:
        out["val_balanced_accuracy_tta"] = tta.balanced_accuracy
    comparison = ci.paired(final.correct, tta.correct)
    if comparison is not None:
        out["tta_vs_plain"] = comparison.to_dict()
    return out


def calibrate(config: FinetuneConfig, final: Evaluation) -> tuple[calibration.Calibration | None, str]:
    """The temperature of the export, fitted on the validation images when there are
    enough (calibration.MIN_IMAGES, MIN_PER_CLASS) and --calibrate is not off; else
    None and why not."""
    if config.calibrate == "off":
        return None, "--calibrate off"
    if final.multi_label:
        return None, calibration.MULTI_LABEL_REASON
    if final.scores is None or not final.num_images:
        return None, "no validation images"
    why = calibration.why_not(final.labels, len(final.classes))
    if why:
        if config.calibrate == "on":  # checked before the run too (check_calibration); a safety net here
            raise ZooAdaptError(f"--calibrate on: {why}")
        return None, why
    return calibration.calibrate(final.scores, final.labels), ""


def check_calibration(config: FinetuneConfig, labels: list, num_classes: int) -> None:
    """--calibrate on with too few validation images: said before anything is written."""
    if config.calibrate != "on":
        return
    if config.multi_label:
        raise ZooAdaptError(f"--calibrate on: {calibration.MULTI_LABEL_REASON}; leave it at auto")
    why = calibration.why_not(labels, num_classes) if labels else "no validation images"
    if why:
        raise ZooAdaptError(f"--calibrate on: {why}; leave --calibrate at auto to skip it")


IMBALANCE_RATIO = 10


def imbalance_warnings(c: FinetuneConfig, counts: list[int], classes: list[str]) -> list[str]:
    """Classes far apart in size, with nothing done about it."""
    present = [n for n in counts if n]
    if c.balance != "none" or not present or max(present) <= IMBALANCE_RATIO * min(present):
        return []
    big, small = counts.index(max(present)), counts.index(min(present))
    return [
        f"imbalanced classes: {classes[big]!r} has {counts[big]} training images, {classes[small]!r} only "
        f"{counts[small]} (more than {IMBALANCE_RATIO}x); consider --balance sampler or loss and "
        "--select-metric balanced_accuracy (or macro_f1)"
    ]


def selection(
    loop: Loop,
    config: FinetuneConfig,
    metrics: dict[str, Any],
    kept_right: list | None = None,
    last_right: list | None = None,
) -> dict[str, Any]:
    """Which epoch was kept and why; when it is not the last, its accuracy against the
    last epoch's on the same images (`kept_right`, `last_right`: each image right or not),
    paired: the bootstrap interval of the difference and McNemar's mid-p, and whether
    the lead is within noise."""
    kept, last = metrics["kept_epoch"], len(loop.history)
    if config.keep == "last" or loop.best is None:
        return {
            "rule": "last",
            "why": "the last epoch" + (", --keep last" if config.keep == "last" else ": no validation score"),
        }
    by = loop.select.replace("_", " ")
    rule: dict[str, Any] = {
        "rule": "best",
        "select": loop.select,
        "tie_images": TIE_IMAGES,
        "why": f"the best by {by}; epochs within {TIE_IMAGES} validation images count as tied, the later kept",
    }
    if kept == last or kept_right is None or last_right is None:
        return rule
    comparison = ci.paired(last_right, kept_right)
    if comparison is None:
        return rule
    rule["kept_vs_last"] = comparison.to_dict()
    what = "" if loop.select == "val_accuracy" else " in accuracy"
    rule["note"] = (
        f"the kept epoch {kept} against the last epoch {last}{what}: {comparison.points()} on the same "
        f"{comparison.n} validation images (paired bootstrap; McNemar mid-p {comparison.p_value:.2f}): "
        f"{comparison.verdict()}" + ("; --keep last exports the last epoch" if comparison.within_noise else "")
    )
    return rule


def machine_notes(config: FinetuneConfig) -> list[str]:
    """config.toml's comments: how to rerun it, and which values the machine chooses."""
    notes = [
        f"zoo-adapt finetune options, every value resolved; rerun with "
        f"`zoo-adapt finetune --config {Path(config.out) / 'config.toml'} --out NEW_FOLDER`"
    ]
    if config.workers is None:
        notes.append("workers: not set, chosen per machine")
    if config.weights is None:
        notes.append("weights: not set, the backbone's default pretrained weights")
    return notes


def run_metrics(
    c: FinetuneConfig, data: Datasets, counts: list[int], loop: Loop, world: int, finished: bool
) -> dict[str, Any]:
    """metrics.json's record of the run so far (each checkpoint writes it, the end too)."""
    history = [r.to_dict() for r in loop.history]
    return {
        "backbone": c.backbone,
        "strategy": c.strategy,
        "data": data.where,
        "classes": data.classes,
        "num_train": len(data.train),
        "num_val": len(data.val) if data.val is not None else 0,
        "device": str(loop.device),
        "processes": world,
        "batch_size": c.batch_size,
        "global_batch_size": c.batch_size * world,
        "precision": loop.runtime.precision,
        "epochs_done": len(history),
        "epochs": len(loop.plan),
        "checkpoint_epoch": loop.epoch,
        "best_epoch": loop.best[1] if loop.best else None,
        "select_metric": loop.select,
        "best_score": loop.best[0] if loop.best else None,
        "best_val_accuracy": loop.history[loop.best[1] - 1].val_accuracy if loop.best else None,
        "class_counts_train": dict(zip(data.classes, counts)),
        "images_per_second": (sum(r["images_per_second"] for r in history) / len(history)) if history else None,
        "history": history,
        "finished": finished,
        "stopped_early": loop.stopped,
        "ema_decay": c.ema,
        "accumulate": c.accumulate,
        **({"skipped_steps": loop.skipped_steps} if loop.runtime.scaler is not None else {}),
    }
