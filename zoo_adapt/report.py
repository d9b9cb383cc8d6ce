"""Plots of a run (training curves, the confusion matrix, the reliability diagram;
matplotlib, no display) and the lines that end it."""

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
        paired = m.get("tta_vs_plain")
        if paired:
            tta += f": TTA {_points(paired)}, {'within noise' if paired['within_noise'] else _verdict(paired)}"
        elif m["val_accuracy_tta"] < m["val_accuracy"]:
            tta += " (TTA lowered it here)"
    what = "source validation" if "proxy_a_distance" in m else "validation"
    if selection.get("note"):
        lines.append(f"note: {selection['note']}")
    calibrated = calibration_line(m)
    if calibrated:
        lines.append(calibrated)
    if m.get("val_accuracy_trained_bn") is not None:
        lines.append(
            f"source validation accuracy: {m['val_accuracy_trained_bn']:.1%} with training's BatchNorm statistics "
            f"(epoch {m['kept_epoch']}, as its line says), {m['val_accuracy']:.1%} with the target images' "
            "statistics, which the exported model carries (--target-bn target: made for the target domain, "
            "so the source figure may drop)"
        )
    lines += per_class_lines(m)  # the headline stays last
    kept = f"kept epoch {m['kept_epoch']} of {m['epochs']} ({selection.get('why', '')}); results in {out}/"
    if m.get("val_map") is not None:
        tta = f", with TTA {m['val_map_tta']:.1%}" if m.get("val_map_tta") is not None else ""
        lines.append(
            f"val mAP {figure(m, 'val_map')}{tta}; at per-class thresholds chosen on these images: macro F1 "
            f"{figure(m, 'val_macro_f1')}, micro F1 {figure(m, 'val_micro_f1')}, all labels right "
            f"{figure(m, 'val_accuracy')}; on {m['num_val']} {what} images; {kept}"
        )
    else:
        balanced = (
            f"; balanced accuracy {figure(m, 'val_balanced_accuracy')}, macro F1 {figure(m, 'val_macro_f1')}"
            if m.get("val_balanced_accuracy") is not None
            else ""
        )
        stats = " with target BatchNorm statistics" if m.get("val_accuracy_trained_bn") is not None else ""
        lines.append(
            f"val_accuracy {figure(m, 'val_accuracy')}{stats} (top-5 {figure(m, 'val_top5')}{tta}){balanced} on "
            f"{m['num_val']} {what} images; {kept}"
        )
    return lines


def figure(m: dict[str, Any], key: str) -> str:
    """'93.3% [90.0, 95.7]': a figure of metrics.json with its 95% interval when it has one."""
    value = m.get(key)
    if value is None:
        return "-"
    interval = m.get(f"{key}_interval")
    return f"{value:.1%}" + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")


def _points(paired: dict[str, Any]) -> str:
    low, high = paired["interval"]
    return f"{100 * paired['difference']:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]"


def _verdict(paired: dict[str, Any]) -> str:
    return "beyond noise: a gain" if paired["difference"] > 0 else "beyond noise: a loss"


def calibration_line(m: dict[str, Any]) -> str:
    """What temperature scaling did (or why it was skipped)."""
    if m.get("temperature") is not None and m.get("val_ece") is not None:
        where = m.get("calibrated_on", "validation images")
        return (
            f"calibration: temperature {m['temperature']:.2f} fitted on {m.get('calibration_images', m['num_val'])} "
            f"{where}: ECE {m['val_ece']:.1%} -> {m['val_ece_calibrated']:.1%}, NLL {m['val_nll']:.3f} -> "
            f"{m['val_nll_calibrated']:.3f}; predict and evaluate apply it"
        )
    if m.get("calibration_skipped"):
        return f"calibration skipped: {m['calibration_skipped']}"
    return ""


def plot_reliability(before, after, path: Path, title: str = "") -> Path:
    """The reliability diagram (Guo et al. 2017): per confidence bin, accuracy against
    confidence, before and after temperature scaling (`before`, `after`: objects with
    edges, count, confidence and accuracy per bin, as calibration.Reliability)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, bins, name in ((axes[0], before, "before"), (axes[1], after, "after temperature scaling")):
        edges = bins.edges
        width = edges[1] - edges[0]
        lefts = [e for e, c in zip(edges[:-1], bins.count) if c]
        accuracy = [a for a, c in zip(bins.accuracy, bins.count) if c]
        confidence = [f for f, c in zip(bins.confidence, bins.count) if c]
        ax.bar(lefts, accuracy, width=width, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
        ax.bar(
            lefts,
            [f - a for f, a in zip(confidence, accuracy)],
            bottom=accuracy,
            width=width,
            align="edge",
            color="tab:red",
            alpha=0.3,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_title(f"{name}: ECE {bins.ece():.1%}", fontsize=10)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


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
