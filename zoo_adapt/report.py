"""Plots of a run: training curves and the confusion matrix (matplotlib, no display)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from zoo_adapt.files import write_bytes


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display): imported on first use, as
    matplotlib is heavy and most commands draw nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, tight: bool = True) -> Path:
    """The one way a figure is saved: laid out, written atomically as PNG (100 dpi),
    closed. Returns the path."""
    plt = pyplot()
    if tight:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def plot_curves(
    history: list[dict[str, Any]], path: Path, title: str = "", extra: tuple[str, ...] = (), kept: int | None = None
) -> Path:
    """Loss and accuracy per epoch, train and validation; dotted lines where more layers
    unfroze, a star on the kept epoch. `extra`: more per-epoch figures from the history,
    one panel each."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    panels = 2 + len(extra)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "top-1 accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        if any(r.get(f"val_{key}") is not None for r in history):
            ax.plot(epochs, [r.get(f"val_{key}") for r in history], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend()
    for ax, key in zip(axes[2:], extra):
        ax.plot(epochs, [r.get(key) for r in history], "o-")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key.replace("_", " "))
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    unfrozen = False
    for prev, cur in zip(history, history[1:]):
        if prev["frozen_to"] != cur["frozen_to"]:
            for ax in axes:
                ax.axvline(
                    cur["epoch"] - 0.5,
                    color="grey",
                    linestyle=":",
                    label=None if unfrozen or ax is not axes[1] else "more layers unfrozen",
                )
            unfrozen = True
    kept_row = next((r for r in history if r["epoch"] == kept), None)
    if kept_row is not None and kept_row.get("val_accuracy") is not None:
        axes[1].plot(
            [kept],
            [kept_row["val_accuracy"]],
            "*",
            color="tab:red",
            markersize=14,
            label=f"kept (epoch {kept})",
            zorder=5,
        )
    axes[1].legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    """Rows: true class; columns: predicted; each row normalised to its class size."""
    import numpy as np

    plt = pyplot()
    m = np.asarray(confusion, dtype=float)
    rows = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 40:
        ax.set_xticks(range(len(classes)), classes, rotation=90)
        ax.set_yticks(range(len(classes)), classes)
        for i in range(len(classes)):
            for j in range(len(classes)):
                if m[i, j]:
                    ax.text(
                        j,
                        i,
                        int(m[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = int(m.sum())
    ax.set_title(title or f"Confusion matrix ({total} images; counts, colour = share of the true class)", fontsize=10)
    return save_figure(fig, path)


def plot_adaptation(
    gap: dict[str, float], history: list[dict[str, Any]], keys: list[str], path: Path, title: str = ""
) -> Path:
    """An adapted run on one sheet: the proxy A-distance before and after, then one panel
    per epoch figure in `keys` (whatever the method logged, the label-free target scores
    and the oracle accuracy), so a third party's method is plotted like DANN."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in history)]
    cols = min(4, len(keys) + 1)
    rows = -(-(len(keys) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    flat = list(axes.flat)
    flat[0].bar(["before", "after"], [gap["before"], gap["after"]], color=["grey", "tab:blue"])
    flat[0].set_ylim(0, 2)
    flat[0].set_title("proxy A-distance (0 same, 2 separable)", fontsize=9)
    epochs = [r["epoch"] for r in history]
    for ax, key in zip(flat[1:], keys):
        ax.plot(
            epochs, [r.get(key) for r in history], "o-", color="tab:red" if key == "target_accuracy_oracle" else None
        )
        ax.set_title(
            key.replace("_", " ") + (" (uses target labels)" if key == "target_accuracy_oracle" else ""), fontsize=9
        )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in flat[len(keys) + 1 :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def summary_lines(m: dict[str, Any], out) -> list[str]:
    """What the end of a run says: the result, which epoch was kept and why, and when a
    figure is not to be trusted (a kept epoch ahead by noise, TTA lowering accuracy)."""
    lines = []
    if "proxy_a_distance" in m:
        gap = m["proxy_a_distance"]
        oracle = (
            f"; target accuracy {m['target_accuracy_oracle']:.1%} (ORACLE: measured with target labels)"
            if m.get("target_accuracy_oracle") is not None
            else ""
        )
        lines.append(f"domain gap (proxy A-distance) {gap['before']:.2f} -> {gap['after']:.2f}{oracle}")
    selection = m.get("selection", {})
    if m.get("stopped_early"):
        lines.append(f"stopped: {m['stopped_early']}")
    if m.get("val_accuracy") is None:
        return lines + [
            f"done: no validation set; kept the last epoch ({m['kept_epoch']}); model in {out}/model.safetensors"
        ]
    tta = ""
    if m.get("val_accuracy_tta") is not None:
        tta = f", with TTA {m['val_accuracy_tta']:.1%}"
        if m["val_accuracy_tta"] < m["val_accuracy"]:
            tta += " (TTA lowered it here)"
    what = "source validation" if "proxy_a_distance" in m else "validation"
    if selection.get("note"):
        lines.append(f"note: {selection['note']}")
    lines += per_class_lines(m)  # the headline stays last
    kept = f"kept epoch {m['kept_epoch']} of {m['epochs']} ({selection.get('why', '')}); results in {out}/"
    if m.get("val_map") is not None:
        tta = f", with TTA {m['val_map_tta']:.1%}" if m.get("val_map_tta") is not None else ""
        lines.append(
            f"val mAP {m['val_map']:.1%}{tta}; at per-class thresholds chosen on these images: macro F1 "
            f"{m['val_macro_f1'] or 0:.1%}, micro F1 {m['val_micro_f1'] or 0:.1%}, all labels right "
            f"{m['val_accuracy']:.1%}; on {m['num_val']} {what} images; {kept}"
        )
    else:
        balanced = (
            f"; balanced accuracy {m['val_balanced_accuracy']:.1%}, macro F1 {m['val_macro_f1']:.1%}"
            if m.get("val_balanced_accuracy") is not None
            else ""
        )
        lines.append(
            f"val_accuracy {m['val_accuracy']:.1%} (top-5 {m['val_top5']:.1%}{tta}){balanced} on "
            f"{m['num_val']} {what} images; {kept}"
        )
    return lines


def per_class_lines(m: dict[str, Any], limit: int = 20) -> list[str]:
    """Precision, recall and F1 of each class (the first `limit`; all are in metrics.json)."""
    f1 = m.get("per_class_f1") or {}
    if not f1:
        return []
    names = list(f1)[:limit]
    width = max(len(n) for n in names)

    def pct(v):
        return "   -  " if v is None else f"{v:6.1%}"

    lines = [f"  {'class':<{width}}  precision  recall      F1"]
    for name in names:
        lines.append(
            f"  {name:<{width}}     {pct(m['per_class_precision'].get(name))}  {pct(m['per_class_recall'].get(name))}"
            f"  {pct(f1.get(name))}"
        )
    if len(f1) > limit:
        lines.append(f"  ... {len(f1) - limit} more classes in metrics.json")
    return lines


def plot_lr_curve(curve, path: Path, title: str = "") -> Path:
    """The LR finder's curve (zoo_adapt.engine.lr_finder.LRCurve): loss against rate, the suggestions marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve.lrs, curve.raw, color="lightgrey", linewidth=0.8, label="loss per batch")
    ax.plot(curve.lrs, curve.losses, color="tab:blue", label="smoothed loss")
    for lr, name, colour in (
        (curve.suggestion, "suggestion (valley)", "tab:red"),
        (curve.steepest, "steepest descent", "tab:green"),
    ):
        ax.axvline(lr, color=colour, linestyle="--", label=f"{name} {lr:.2g}")
    ax.set_xscale("log")
    low, high = min(curve.losses), max(curve.losses)
    bottom = min(low, min(curve.raw))
    ax.set_ylim(bottom - 0.05 * (high - bottom), min(high, low + 4 * (curve.losses[0] - low + 1e-3)))
    ax.set_xlabel("head learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title or "learning-rate finder")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_ranking(rows: list[dict[str, Any]], recommended: tuple[str, bool] | None, path: Path) -> Path:
    """Each ranked backbone's score against its cost (seconds to extract and score its
    features): probe accuracy with its 95% interval where there is one, else LogME;
    random-init bodies hollow, the recommendation (name, pretrained) starred."""
    plt = pyplot()
    ranked = [r for r in rows if r.get("error") is None]
    probe = all(r.get("probe_accuracy") is not None for r in ranked)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in ranked:
        y = r["probe_accuracy"] if probe else r["logme"]
        colour = "tab:blue" if r["pretrained"] else "tab:grey"
        if probe and r.get("probe_interval"):
            low, high = r["probe_interval"]
            ax.errorbar(r["seconds"], y, yerr=[[y - low], [high - y]], color=colour, capsize=3, alpha=0.6)
        ax.plot(r["seconds"], y, "o", color=colour, markerfacecolor=colour if r["pretrained"] else "white")
        if (r["backbone"], r["pretrained"]) == recommended:
            ax.plot(r["seconds"], y, "*", color="tab:red", markersize=18, label="recommended")
        name = r["backbone"] + ("" if r["pretrained"] else " (random)")
        ax.annotate(name, (r["seconds"], y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("seconds (features of every image, and the scores)")
    ax.set_ylabel("probe accuracy on validation (95% interval)" if probe else "LogME")
    if recommended is not None:
        ax.legend(loc="lower right")
    ax.margins(x=0.25, y=0.1)
    ax.set_title("Which backbone? score against cost")
    return save_figure(fig, path)
