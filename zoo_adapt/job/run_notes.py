"""What a fine-tuning run tells its user and records about itself: warnings before it
starts (defaults that do something unexpected, imbalanced classes), the recipes line,
config.toml's notes, metrics.json's validation block and which epoch was kept and why."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo_adapt.data.augment import describe
from zoo_adapt.engine import processes
from zoo_adapt.job.config import FinetuneConfig

if TYPE_CHECKING:
    from zoo_adapt.engine.loop import Loop

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


def validation_metrics(final) -> dict[str, Any]:
    """What metrics.json holds of the kept model's validation."""
    out = {
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
    return out


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


def selection(loop: Loop, config: FinetuneConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """Which epoch was kept and why, and whether its lead is within noise: below one
    standard error of an accuracy measured on n images, sqrt(p (1 - p) / n)."""
    kept, last = metrics["kept_epoch"], len(loop.history)
    if config.keep == "last" or loop.best is None:
        return {
            "rule": "last",
            "why": "the last epoch" + (", --keep last" if config.keep == "last" else ": no validation score"),
        }
    by = loop.select.replace("_", " ")
    rule = {
        "rule": "best",
        "select": loop.select,
        "tie_images": TIE_IMAGES,
        "why": f"the best by {by}; epochs within {TIE_IMAGES} validation images count as tied, the later kept",
    }
    n = metrics.get("num_val") or 0
    kept_score, last_score = loop.best[0], loop.history[-1].get(loop.select)
    if kept != last and n and last_score is not None:
        lead = kept_score - last_score
        noise = (kept_score * (1 - kept_score) / n) ** 0.5
        rule["lead_over_last"] = lead
        if lead < noise:
            rule["note"] = (
                f"the kept epoch {kept} leads the last epoch {last} by {lead:.1%} ({round(lead * n)} of "
                f"{n} validation images), within the noise of so few images (one standard error: "
                f"{noise:.1%}); --keep last exports the last epoch"
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
