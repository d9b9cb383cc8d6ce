"""K-fold cross-validation (`--folds K`): one number from every training image instead
of one split's, and the model to ship.

The training images are dealt into K stratified, seeded folds (data/folders.py,
`stratified_folds`). Fold k is a complete run of its own in OUT/fold-k/ with the
options given (so --resume, the trackers, torchrun and the feature cache work per
fold): it trains on the other folds and validates on fold k, whose predictions by the
fold's kept model are its out-of-fold (OOF) predictions. A linear probe's cached
features are extracted once, by the first fold, and shared by the others (and the refit)
while the body's weights are the same.

Then, in OUT/: oof.csv (every training image once: path, label, fold, prediction, each
class's probability), folds.csv (a row per fold), metrics.json (the cross-validated
figures: pooled over the OOF predictions with their 95% intervals, and the mean over
folds with a t interval), and the model to ship:

- refit (the default): retrained on every training image in OUT/refit/ for the median
  of the folds' kept epochs (the upper median for an even K), with the same schedule as
  the folds' runs (it stops at that epoch), then copied to OUT/model.safetensors with the
  temperature fitted on the OOF predictions (multi-label: the thresholds chosen on
  them) in its header;
- ensemble: no refit; OUT/ensemble.json names the K fold models, which `predict` and
  `evaluate` average when given the run folder (each fold's model.safetensors stays a
  plain model).

A val/ or test/ split, when there is one, is scored once at the end with the shipped
model and never used for a choice. Ctrl-C leaves every finished fold and the current
fold's checkpoint; `--resume` continues at the fold and epoch where the run stopped.

The interval over folds treats the K fold scores as independent, which they are not
(their training sets overlap), so it is narrower than the truth (Bengio & Grandvalet
2004); the pooled interval counts images, which are."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo_adapt.data.folders import ImageDataset, Samples, dataset_labels
from zoo_adapt.engine.callbacks import Callback
from zoo_adapt.engine.processes import Processes
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.files import remove, write_bytes, write_text
from zoo_adapt.job.config import FinetuneConfig, resolved_values
from zoo_adapt.job.inputs import Datasets, demo_root, fold_assignment, is_demo, load_datasets
from zoo_adapt.job.run_folder import (
    CHECKPOINT,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RUN_FILES,
    RunFolder,
    config_text,
    sha256,
    write_json,
)
from zoo_adapt.job.run_notes import INTERVAL_NAMES, machine_notes
from zoo_adapt.metrics import calibration
from zoo_adapt.metrics import intervals as ci
from zoo_adapt.metrics.evaluation import Tally
from zoo_adapt.metrics.multilabel import MultiLabelTally
from zoo_adapt.metrics.scores import Evaluation
from zoo_adapt.report import calibration_line, figure, plot_reliability
from zoo_adapt.ship.ensemble import write_ensemble
from zoo_adapt.ship.export import rewrite_header
from zoo_adapt.ship.inference import evaluate_images
from zoo_adapt.ship.model_card import write_hub_files
from zoo_adapt.ship.model_files import ENSEMBLE_FILE
from zoo_adapt.ship.onnx_export import export_onnx

Log = Callable[[str], None]
OOF_FILE, FOLDS_TABLE, FOLD_OOF, REFIT = "oof.csv", "folds.csv", "oof.npz", "refit"
CALIBRATION_PLOT = "calibration.png"
LEFT_BY_FOLDS = (OOF_FILE, FOLDS_TABLE, ENSEMBLE_FILE, CALIBRATION_PLOT, "README.md", "config.json", "model.onnx")


def fold_dir(out: Path, k: int) -> Path:
    return out / f"fold-{k}"


class FoldsInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a cross-validation, said for the whole run."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.message, self.signal_name = message, signal_name


class StopAfter(Callback):
    """The refit's schedule is the folds' (`--epochs`), but it stops at the epoch the
    folds chose; the stop is in the checkpoint, so a resumed refit stops the same."""

    order = 80  # before the recorder (90), which checkpoints the stop

    def __init__(self, epochs: int):
        self.epochs = epochs

    def epoch_end(self, loop, record, improved: bool) -> None:
        if record.epoch >= self.epochs and loop.epoch < len(loop.plan):
            loop.stopped = (
                f"the refit stops after epoch {record.epoch} of {len(loop.plan)}: the median of the folds' kept epochs"
            )


@dataclasses.dataclass
class FoldResult:
    k: int
    index: np.ndarray  # positions of the fold's validation images among the training images
    labels: np.ndarray
    scores: np.ndarray  # log-probabilities (multi-label: probabilities) of the fold's kept model
    metrics: dict[str, Any]
    seconds: float = 0.0


def cross_validate(
    config: FinetuneConfig,
    run: Callable[..., Any],
    log: Log | None,
    overwrite: bool,
    procs: Processes,
    device: torch.device,
):
    """`finetune` with --folds K: the folds, the refit (or the ensemble), the figures.
    `run(config, callbacks, memo, overwrite, log)` runs one plain job (finetune's)."""
    say: Log = log or (lambda s: None)
    out, folds = Path(config.out), int(config.folds or 0)
    data = load_datasets(config)  # the folds are checked (every class in every fold) before anything is written
    assert data.pool is not None
    assignment = fold_assignment(data.pool, config)
    _precheck(out, config.resume, overwrite)
    if config.calibrate == "on" and not config.multi_label:
        why = calibration.why_not(dataset_labels(data.train), len(data.classes))
        if why:
            raise ZooAdaptError(f"--calibrate on: {why.replace('validation', 'training')}; leave it at auto")
    top = RunFolder(out)
    if procs.main:
        top.acquire()
    try:
        if procs.main:
            _begin(top, out, config, fresh=not config.resume)
        say(_plan_line(config, data))
        memo: dict = {}
        results: list[FoldResult] = []
        durations: list[float] = []
        for k in range(1, folds + 1):
            start = time.perf_counter()
            results.append(_fold(config, k, run, memo, say, out, assignment, procs, durations))
            durations.append(time.perf_counter() - start)
        refit = None
        if config.folds_export != "ensemble":
            epochs = refit_epochs([r.metrics["kept_epoch"] for r in results])
            say(
                f"refit: every one of the {len(data.pool.items)} training images, {epochs} epochs (the median of the "
                f"folds' kept epochs {[r.metrics['kept_epoch'] for r in results]}); {_time_left(durations, 1)}"
            )
            refit = _refit(config, epochs, run, memo, say, out, folds)
        return _conclude(config, data, results, refit, say, out, procs, device)
    finally:
        if procs.main:
            top.release()


def refit_epochs(kept: list[int]) -> int:
    """The median of the folds' kept epochs; the upper one for an even count."""
    ordered = sorted(kept)
    return ordered[len(ordered) // 2]


def _precheck(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ZooAdaptError(f"--out {out} is a file, not a folder")
    held = [p for p in (*RUN_FILES, OOF_FILE, "fold-1") if (out / p).exists()]
    if resume:
        if not (out / CONFIG_FILE).is_file():
            raise ZooAdaptError(f"nothing to resume: {out / CONFIG_FILE} does not exist")
    elif held and not overwrite:
        raise ZooAdaptError(
            f"{out} already holds a run; continue it with --resume, rerun it from scratch with --overwrite, "
            "or choose another --out"
        )


def _begin(top: RunFolder, out: Path, config: FinetuneConfig, fresh: bool) -> None:
    """config.toml of the whole run; a fresh start removes an earlier run's folds."""
    if fresh:
        for path in out.glob("fold-*"):
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(out / REFIT, ignore_errors=True)
        for name in LEFT_BY_FOLDS:
            remove(out / name, folders=True)
    values = resolved_values(dataclasses.replace(config, folds_export=config.folds_export or "refit"))
    top.begin(config_text(values, machine_notes(config)), fresh=fresh)


def _plan_line(config: FinetuneConfig, data: Datasets) -> str:
    assert data.pool is not None
    n = len(data.pool.items)
    held = (
        f"; the {len(data.held_out)} held-out images ({data.where.split(' (held out')[0].split('; ')[0]}) are "
        "scored once at the end, never used for a choice"
        if data.held_out is not None
        else ""
    )
    ship = (
        "the K fold models averaged (ensemble)"
        if config.folds_export == "ensemble"
        else "a refit on every training image"
    )
    return (
        f"{config.folds}-fold cross-validation of {n} training images (stratified, seed {config.seed}): each fold "
        f"a run of its own validated on about {n // int(config.folds or 1)} images, which choose its kept epoch; "
        f"then {ship}{held}"
    )


def _time_left(durations: list[float], folds_left: int) -> str:
    """From the folds done so far (the refit counts as one more)."""
    if not durations:
        return "time left: after the first fold"
    mean = sum(durations) / len(durations)
    left = mean * folds_left
    return f"about {left / 60:.1f} min left" if left >= 60 else f"about {left:.0f} s left"


def _fold(config, k: int, run, memo, say: Log, out: Path, assignment: list[int], procs, durations) -> FoldResult:
    """Fold k: read from its folder when it finished, else resumed or started."""
    folder, folds = fold_dir(out, k), int(config.folds)
    done = _finished(folder)
    if done is not None:
        say(f"fold {k} of {folds}: finished before, read from {folder}")
        return done
    left = folds - k + 1 + (config.folds_export != "ensemble")
    resume = (folder / CHECKPOINT).is_file()
    say(f"fold {k} of {folds}" + (" (resumed)" if resume else "") + f"; {_time_left(durations, left)}")
    one = dataclasses.replace(
        config,
        fold=k,
        out=str(folder),
        resume=resume,
        folds_export=None,
        calibrate="auto" if config.calibrate == "on" else config.calibrate,
    )
    try:
        result = run(one, (), memo, True, _prefixed(say, f"[fold {k}/{folds}] "))
    except KeyboardInterrupt as e:
        raise _interrupted(e, out, f"fold {k} of {folds}", folder) from None
    final: Evaluation | None = result.validation
    if final is None:
        raise ZooAdaptError(f"fold {k} of {folds} has no validation images")  # cannot happen: every fold has some
    index = np.asarray([i for i, a in enumerate(assignment) if a == k - 1], np.int64)
    fold = FoldResult(k, index, np.asarray(final.labels), np.asarray(final.scores), result.metrics)
    if procs.main:
        _write_npz(folder / FOLD_OOF, index=fold.index, labels=fold.labels, scores=fold.scores)
    return fold


def _prefixed(say: Log, prefix: str) -> Log:
    return lambda line: say(prefix + line)


def _interrupted(e: KeyboardInterrupt, out: Path, where: str, folder: Path) -> FoldsInterrupted:
    signal_name = getattr(e, "signal_name", "SIGINT")
    how = "interrupted" if signal_name == "SIGINT" else f"stopped by {signal_name}"
    kept = (
        f"{folder / CHECKPOINT} holds its last finished epoch"
        if (folder / CHECKPOINT).is_file()
        else "it starts again from its first epoch"
    )
    return FoldsInterrupted(
        f"{how} in {where}: the folds before it are done and {kept}; continue with "
        f"`zoo-adapt finetune --out {out} --resume`",
        signal_name,
    )


def _finished(folder: Path) -> FoldResult | None:
    """A fold (or the refit) whose run finished and whose predictions were saved."""
    try:
        metrics = json.loads((folder / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not metrics.get("finished") or not (folder / FOLD_OOF).is_file():
        return None
    with np.load(folder / FOLD_OOF, allow_pickle=False) as saved:
        return FoldResult(
            int(folder.name.split("-")[-1]) if "-" in folder.name else 0,
            saved["index"],
            saved["labels"],
            saved["scores"],
            metrics,
        )


def _write_npz(path: Path, **arrays: Any) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def _refit(config: FinetuneConfig, epochs: int, run, memo, say: Log, out: Path, folds: int):
    """Every training image, no validation, the folds' schedule, stopping at `epochs`."""
    folder = out / REFIT
    resume = (folder / CHECKPOINT).is_file()  # a finished refit resumes too: its end is written again
    one = dataclasses.replace(
        config,
        fold=0,
        out=str(folder),
        resume=resume,
        keep="last",
        early_stop=None,
        folds_export=None,
        calibrate="off",
        export=[],
    )
    stop = [StopAfter(epochs)] if epochs < config.epochs else []
    try:
        result = run(one, stop, memo, True, _prefixed(say, "[refit] "))
    except KeyboardInterrupt as e:
        raise _interrupted(e, out, "the refit", folder) from None
    return result


def _conclude(config, data: Datasets, results: list[FoldResult], refit, say: Log, out: Path, procs, device):
    """The pooled out-of-fold figures, the calibration, the shipped model, the held-out
    score, the files and the summary."""
    assert data.pool is not None
    pool, classes = data.pool, data.classes
    n = len(pool.items)
    order = np.concatenate([r.index for r in results])
    labels = _stack([r.labels for r in results], order, n)
    scores = _stack([r.scores for r in results], order, n)
    fold_of = np.zeros(n, np.int64)
    for r in results:
        fold_of[r.index] = r.k
    pooled = _pooled(scores, labels, classes, config.multi_label)
    fitted, why = None, ""
    if config.multi_label:
        why = calibration.MULTI_LABEL_REASON
    elif config.calibrate == "off":
        why = "--calibrate off"
    else:
        why = calibration.why_not(labels, len(classes)) or ""
        why = why.replace("validation images", "out-of-fold predictions")
        if not why:
            fitted = calibration.calibrate(scores, labels)
    metrics = _metrics(config, data, results, pooled, fitted, why, refit)
    if not procs.main:
        return _result(refit, results, metrics, out, pooled)
    write_text(out / OOF_FILE, oof_csv(config, pool, classes, labels, scores, fold_of, pooled))
    write_text(out / FOLDS_TABLE, folds_csv(results))
    if fitted is not None:
        plot_reliability(
            fitted.before, fitted.after, out / CALIBRATION_PLOT, title=f"{config.backbone}: {n} out-of-fold predictions"
        )
    shipped = _ship(config, out, refit, fitted, pooled, results)
    if data.held_out is not None:
        held = evaluate_images(shipped, data.held_out, device)
        metrics["held_out"] = {**_figures(held, "test_"), "num_images": held.num_images, "where": data.where}
    write_json({**metrics, "model_sha256": sha256(shipped) if shipped.is_file() else None}, out / METRICS_FILE)
    if config.folds_export != "ensemble":
        if "onnx" in config.export:
            export_onnx(shipped, out / "model.onnx", images=data.held_out or ImageDataset(pool), log=say)
        write_hub_files(out, log=say)
    for line in summary(metrics, out):
        say(line)
    return _result(refit, results, metrics, out, pooled)


def _stack(parts: list[np.ndarray], order: np.ndarray, n: int) -> np.ndarray:
    joined = np.concatenate(parts)
    out = np.zeros((n, *joined.shape[1:]), dtype=joined.dtype)
    out[order] = joined
    return out


def _pooled(scores: np.ndarray, labels: np.ndarray, classes: list[str], multi_label: bool) -> Evaluation:
    """The figures of every out-of-fold prediction at once (multi-label: at thresholds
    chosen on them, which the refit model then uses)."""
    cpu = torch.device("cpu")
    if multi_label:
        tally = MultiLabelTally(len(classes), cpu)
        tally.add(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.float32))
        return tally.result(classes, None, intervals=True)
    single = Tally(len(classes), cpu, keep_scores=True)
    single.add(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long))
    return single.result(classes, intervals=True)


def _figures(ev: Evaluation, prefix: str) -> dict[str, Any]:
    """An evaluation's headline figures with their intervals, under `prefix`."""
    names = {"accuracy": ev.accuracy, "macro_f1": ev.macro_f1}
    if ev.multi_label:
        names.update(map=ev.map, micro_f1=ev.micro_f1)
    else:
        names.update(top5=ev.top5, balanced_accuracy=ev.balanced_accuracy)
    out: dict[str, Any] = {f"{prefix}{k}": v for k, v in names.items()}
    out.update({f"{prefix}{k}_interval": ev.intervals.get(k) for k in names})
    out[f"{prefix}loss"] = ev.loss
    return out


def _metrics(config, data: Datasets, results, pooled: Evaluation, fitted, why: str, refit) -> dict[str, Any]:
    select = config.selection_metric
    per_fold = [
        {
            "fold": r.k,
            "num_train": r.metrics.get("num_train"),
            "num_val": r.metrics.get("num_val"),
            "kept_epoch": r.metrics.get("kept_epoch"),
            **{
                key: r.metrics.get(key)
                for key in (
                    "val_accuracy",
                    "val_accuracy_interval",
                    "val_balanced_accuracy",
                    "val_macro_f1",
                    "val_map",
                    "temperature",
                )
                if key in r.metrics
            },
        }
        for r in results
    ]
    scores = [r.metrics.get(f"val_{select}") for r in results]
    scores = [s for s in scores if s is not None]
    mean = float(np.mean(scores)) if scores else None
    spread = ci.mean_interval(scores)
    metrics: dict[str, Any] = {
        "backbone": config.backbone,
        "strategy": config.strategy,
        "data": data.where,
        "classes": data.classes,
        "folds": config.folds,
        "folds_export": config.folds_export or "refit",
        "seed": config.seed,
        "num_train": len(data.pool.items) if data.pool else None,
        "num_val": pooled.num_images,
        "validated_on": "out-of-fold predictions (each image by the fold model that did not train on it)",
        "select_metric": f"val_{select}",
        f"cv_{select}_mean": mean,
        f"cv_{select}_interval": ci.as_list(spread),
        "cv_interval_note": "t interval over the folds' scores, which are not independent: narrower than the truth",
        "per_fold": per_fold,
        "finished": True,
        "epochs": config.epochs,
    }
    metrics.update(_figures(pooled, "val_"))
    metrics.update({f"{INTERVAL_NAMES[k]}_interval": v for k, v in pooled.intervals.items() if k == "per_class_recall"})
    metrics["per_class_recall"] = pooled.recall
    metrics["per_class_precision"] = pooled.precision
    metrics["per_class_f1"] = pooled.f1
    if pooled.multi_label:
        metrics["thresholds"] = pooled.thresholds
    else:
        metrics["confusion_matrix"] = pooled.confusion
    if fitted is not None:
        metrics.update(fitted.metrics())
        metrics["calibrated_on"] = "out-of-fold predictions"
        metrics["calibration_images"] = fitted.images
    else:
        metrics["calibration_skipped"] = why
    if refit is not None:
        metrics["refit_epochs"] = refit.metrics.get("epochs_done")
        metrics["kept_epoch"] = refit.metrics.get("epochs_done")
        metrics["history"] = refit.metrics.get("history", [])
        metrics["epochs_done"] = refit.metrics.get("epochs_done")
        metrics["device"] = refit.metrics.get("device")
        metrics["precision"] = refit.metrics.get("precision")
    return metrics


def _ship(config, out: Path, refit, fitted, pooled: Evaluation, results) -> Path:
    """OUT/model.safetensors (the refit, calibrated on the OOF predictions), or
    OUT/ensemble.json naming the fold models; returns what predict takes."""
    temperature = fitted.temperature if fitted is not None else None
    if config.folds_export == "ensemble":
        models = [fold_dir(out, r.k) / MODEL_FILE for r in results]
        return write_ensemble(out, models, temperature, pooled.thresholds if pooled.multi_label else None)
    assert refit is not None
    extra: dict[str, Any] = {"folds": config.folds, "refit_epochs": refit.metrics.get("epochs_done")}
    if temperature is not None:
        extra["temperature"] = temperature
    if pooled.multi_label:
        extra["thresholds"] = pooled.thresholds
    return rewrite_header(out / REFIT / MODEL_FILE, out / MODEL_FILE, extra)


def _result(refit, results, metrics, out: Path, pooled: Evaluation):
    base = refit
    if base is None:  # the ensemble: the last fold's model stands for the run in Python
        from_fold = results[-1]
        return _Result(None, [], metrics, out, pooled, from_fold.k)
    return dataclasses.replace(base, metrics=metrics, out=out, validation=pooled)


@dataclasses.dataclass
class _Result:
    """What `finetune` returns for an ensemble export (no single model to hand back)."""

    model: Any
    history: list
    metrics: dict[str, Any]
    out: Path
    validation: Evaluation | None
    last_fold: int

    @property
    def kept_epoch(self) -> int | None:
        return None


def oof_csv(config, pool: Samples, classes, labels, scores, fold_of, pooled: Evaluation) -> str:
    """oof.csv: every training image once, as the label file or the folder names it."""
    base = _names_root(config)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "fold", "prediction", *[f"probability_{c}" for c in classes]])
    probs = scores if config.multi_label else np.exp(scores)
    for i, (path, _) in enumerate(pool.items):
        name = _name(Path(path), base)
        if config.multi_label:
            label = "|".join(classes[c] for c in np.flatnonzero(labels[i]))
            said = "|".join(classes[c] for c in np.flatnonzero(np.asarray(pooled.predictions[i])))
        else:
            label, said = classes[int(labels[i])], classes[int(np.argmax(probs[i]))]
        writer.writerow([name, label, int(fold_of[i]), said, *[f"{p:.6f}" for p in probs[i]]])
    return buffer.getvalue()


def _names_root(config: FinetuneConfig) -> Path:
    if config.labels:
        return Path(config.data) if config.data else Path(config.labels).parent
    if is_demo(config):
        return demo_root()
    return Path(str(config.data))


def _name(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path, base) if path.is_relative_to(base) else str(path)
    except ValueError:
        return str(path)


def folds_csv(results: list[FoldResult]) -> str:
    buffer = io.StringIO()
    keys = ["fold", "num_train", "num_val", "kept_epoch", "val_accuracy", "val_accuracy_low", "val_accuracy_high"]
    keys += ["val_balanced_accuracy", "val_macro_f1", "val_map", "temperature"]
    writer = csv.DictWriter(buffer, keys, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in results:
        interval = r.metrics.get("val_accuracy_interval") or [None, None]
        row = {key: r.metrics.get(key) for key in keys}
        row.update(fold=r.k, val_accuracy_low=interval[0], val_accuracy_high=interval[1])
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def summary(m: dict[str, Any], out: Path) -> list[str]:
    """The end of a cross-validation: a line per fold, the estimate, the calibration,
    the held-out score and the shipped model."""
    select = m["select_metric"][len("val_") :]
    lines = ["  fold  train  val  kept epoch  accuracy"]
    for row in m["per_fold"]:
        lines.append(
            f"  {row['fold']:>4}  {row['num_train']:>5}  {row['num_val']:>3}  {row['kept_epoch']:>10}  "
            f"{figure(row, 'val_accuracy')}"
        )
    spread = m.get(f"cv_{select}_interval")
    mean = m.get(f"cv_{select}_mean")
    over_folds = (
        f"; mean over folds {mean:.1%}" + (f" [{100 * spread[0]:.1f}, {100 * spread[1]:.1f}]" if spread else "")
        if mean is not None
        else ""
    )
    calibrated = calibration_line(m)
    if calibrated:
        lines.append(calibrated)
    held = m.get("held_out")
    if held:
        lines.append(
            f"held out: accuracy {figure(held, 'test_accuracy')} on {held['num_images']} images, scored once by "
            "the shipped model"
        )
    shipped = (
        f"the {m['folds']} fold models averaged: give {out} to predict and evaluate"
        if m["folds_export"] == "ensemble"
        else f"refit on all {m['num_train']} training images for {m.get('refit_epochs')} epochs: "
        f"{out}/model.safetensors"
    )
    lines.append(
        f"cross-validated ({m['folds']} folds) val_accuracy {figure(m, 'val_accuracy')} on {m['num_val']} "
        f"out-of-fold predictions ({select.replace('_', ' ')}{over_folds}); shipped: {shipped}; "
        f"oof.csv, folds.csv in {out}/"
    )
    return lines
