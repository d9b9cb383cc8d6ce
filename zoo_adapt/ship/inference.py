"""Using an exported model: score it on a labelled folder, or predict images."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from zoo_adapt.data.folders import (
    IMAGE_SUFFIXES,
    ImageDataset,
    checked,
    image_files,
    labelled_folder,
    open_image,
    scan_folder,
)
from zoo_adapt.data.label_file import LabelColumns, read_rows, rows_to_samples, split_rows
from zoo_adapt.data.pipeline import default_workers, eval_batches
from zoo_adapt.data.transforms import EvalTransform, normalize
from zoo_adapt.engine.device import prepare_device, resolve_device
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.metrics.evaluation import Evaluation, evaluate, predict_proba
from zoo_adapt.progress import Ticker
from zoo_adapt.ship.ensemble import load_any, read_any_card
from zoo_adapt.ship.prediction_files import PredictionFile, output_format


def labelled_rows(labels: str | Path, data: str | Path | None, columns, classes: list[str], multi_label: bool):
    """(samples, where) of a label file for evaluation: its test rows, else its val rows,
    else every row; labels outside the model's classes are errors naming the line."""
    file = Path(labels)
    rows = read_rows(file, data, replace(columns, multi_label=multi_label))
    _, val, test = split_rows(rows)
    chosen, which = (test, "test rows") if test else (val, "val rows") if val else (rows, "all rows")
    samples = rows_to_samples(chosen, classes, file, multi_label)
    checked([path for path, _ in samples.items], str(file), False)
    return samples, f"{file} ({which})"


def evaluate_folder(
    model_path: str | Path,
    data: str | Path | None,
    tta: bool = False,
    batch_size: int = 64,
    device: str = "auto",
    workers: int | None = None,
    labels: str | Path | None = None,
    columns=None,
) -> Evaluation:
    """Accuracy, top-5, balanced accuracy, per-class accuracy, precision, recall, F1 and
    confusion matrix of an exported model on a labelled ImageFolder whose classes are (a
    subset of) the model's, or on a label file's rows (`labels`, paths relative to
    `data`; `columns`: a label_file.LabelColumns). A multi-label model gets mAP and F1 at
    its stored thresholds. The model's header and the images are checked before the
    weights are loaded. `model_path`: a model file, or a run folder (its model, or a
    cross-validated run's ensemble). Every figure comes with its 95% interval
    (`Evaluation.intervals`); the stored temperature is applied (it changes the loss,
    not the accuracy)."""
    if batch_size < 1:
        raise ZooAdaptError(f"batch size must be at least 1, not {batch_size}")
    card = read_any_card(model_path)
    if labels is not None:
        samples, folder = labelled_rows(labels, data, columns or LabelColumns(), card.classes, card.multi_label)
    elif card.multi_label:
        raise ZooAdaptError(f"{model_path} is a multi-label model: evaluate it on a label file (--labels)")
    else:
        if data is None:
            raise ZooAdaptError("give --data (a labelled folder) or --labels (a label file)")
        folder = labelled_folder(data)
        samples = scan_folder(folder, classes=card.classes)
    result = evaluate_images(model_path, ImageDataset(samples), device, tta, batch_size, workers)
    result.folder = str(folder)
    return result


def evaluate_images(
    model_path: str | Path,
    images,
    device: str | torch.device = "auto",
    tta: bool = False,
    batch_size: int = 64,
    workers: int | None = None,
    keep_scores: bool = False,
) -> Evaluation:
    """An exported model (or ensemble) scored on labelled images (an ImageSource), with
    intervals, at its stored temperature and thresholds; `keep_scores`: each image's
    log-probabilities (at that temperature) in `scores`."""
    dev = resolve_device(str(device))
    prepare_device(dev)
    model, card = load_any(model_path, dev)
    batches = eval_batches(
        images,
        card.normalization,
        dev,
        batch_size=batch_size,
        workers=default_workers(dev) if workers is None else workers,
    )
    return evaluate(
        model,
        batches,
        card.classes,
        tta=tta,
        autocast=dev.type == "cuda",
        flip=card.hflip,
        vflip=card.vflip,
        rot90=card.rot90,
        progress="evaluating",
        multi_label=card.multi_label,
        thresholds=card.thresholds,
        temperature=card.temperature,
        intervals=True,
        keep_scores=keep_scores,
        sharded=False,  # every image on this process (under torchrun, the folds' held-out set is rank 0's)
    )


@dataclass
class Prediction:
    """`top`: the k most probable classes; for a multi-label model, `labels` are every
    class at or above its threshold (possibly none) and `top` all classes."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)  # empty when `error`
    error: str | None = None
    labels: list[tuple[str, float]] | None = None

    def to_dict(self) -> dict:
        if self.error:
            return {"path": self.path, "error": self.error}
        if self.labels is not None:
            return {
                "path": self.path,
                "labels": [c for c, _ in self.labels],
                "probabilities": {c: p for c, p in self.top},
            }
        return {
            "path": self.path,
            "prediction": self.top[0][0],
            "top": [{"class": c, "probability": p} for c, p in self.top],
        }


def expand_paths(paths: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """Image files named directly or found below folders, each with None or why it
    cannot be read (no such file, not a regular file, a folder without images): one bad
    name must not stop the others."""
    out: list[tuple[Path, str | None]] = []
    for p in map(Path, paths):
        if p.is_dir():
            unreadable: list[tuple[Path, str]] = []  # entries that cannot be looked at (a link to itself)
            try:
                found = image_files(p, report=True, unreadable=unreadable)
            except ZooAdaptError as e:
                out.append((p, str(e)))
                continue
            if not found and not unreadable:
                out.append((p, f"{p} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)"))
            entries: list[tuple[Path, str | None]] = [(f, None) for f in found] + [(f, why) for f, why in unreadable]
            out += sorted(entries, key=lambda entry: entry[0])
        elif p.is_file():
            out.append((p, None))
        elif p.exists():
            out.append((p, f"cannot read image {p}: not a regular file"))
        else:
            out.append((p, f"cannot read image {p}: no such file" + (" (a broken link)" if p.is_symlink() else "")))
    return out


def predict_paths(
    model_path: str | Path,
    paths: Iterable[str | Path],
    tta: bool = False,
    top_k: int = 5,
    batch_size: int = 32,
    device: str = "auto",
) -> list[Prediction]:
    """Top-k classes with probabilities for each image, in the order given; a file that
    cannot be read (missing, not a regular file, corrupt, a decompression bomb) gets an
    error entry instead of stopping the others."""
    return list(iter_predictions(model_path, paths, tta=tta, top_k=top_k, batch_size=batch_size, device=device))


def iter_predictions(
    model_path: str | Path,
    paths: Iterable[str | Path],
    tta: bool = False,
    top_k: int = 5,
    batch_size: int = 32,
    device: str = "auto",
    entries: list | None = None,
) -> Iterator[Prediction]:
    """predict_paths, one batch at a time, so a caller can print results as they come.
    Images of a batch are decoded in threads; batches run on the device. `entries`:
    expand_paths(paths), when the caller has it already."""
    if top_k < 1:
        raise ZooAdaptError(f"top-k must be at least 1, not {top_k}")
    if batch_size < 1:
        raise ZooAdaptError(f"batch size must be at least 1, not {batch_size}")
    dev = resolve_device(device)
    model, card = load_any(model_path, dev)
    transform = EvalTransform(card.normalization)
    entries = expand_paths(paths) if entries is None else entries
    k = len(card.classes) if card.multi_label else min(top_k, len(card.classes))

    def decode(item):
        path, error = item
        if error is not None:
            return None, error
        try:
            return transform(open_image(path, mode=transform.image_mode)), None
        except ZooAdaptError as e:
            return None, str(e)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        yield from _predicted_batches(model, card, entries, batch_size, k, tta, dev, pool, decode)


def _predicted_batches(model, card, entries, batch_size, k, tta, dev, pool, decode) -> Iterator[Prediction]:
    for start in range(0, len(entries), batch_size):
        done: list[Prediction] = []
        batch, kept = [], []
        chunk = entries[start : start + batch_size]
        for (path, _), (image, error) in zip(chunk, pool.map(decode, chunk)):
            done.append(Prediction(str(path), error=error))
            if error is None:
                batch.append(image)
                kept.append(done[-1])
        if batch:
            x = normalize(torch.stack(batch).to(dev), card.normalization)
            probs = predict_proba(
                model,
                x,
                tta=tta,
                autocast=dev.type == "cuda",
                flip=card.hflip,
                multi_label=card.multi_label,
                temperature=card.temperature,
                vflip=card.vflip,
                rot90=card.rot90,
            )
            values, indices = probs.topk(k, -1)
            for pred, v, i in zip(kept, values.tolist(), indices.tolist()):
                pred.top = [(card.classes[c], p) for c, p in zip(i, v)]
                if card.multi_label:
                    pred.labels = [(card.classes[c], p) for c, p in zip(i, v) if p >= card.thresholds[c]]
        yield from done


def write_predictions(
    model_path: str | Path,
    paths: Iterable[str | Path],
    output: str | Path,
    tta: bool = False,
    top_k: int = 3,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
    on_error=None,
    all_probabilities: bool = False,
) -> tuple[int, int]:
    """Predict every image of `paths` (files or folders, any size) into `output`, in the
    format its suffix names (.csv, .jsonl, .json, .parquet: zoo_adapt.ship.prediction_files):
    path, prediction, probability, then label_i / probability_i for the top k, with
    `all_probabilities` p_<class> for every class, and an error column for files that
    cannot be read (JSON: Prediction.to_dict() records, with `probabilities` of every
    class on request). Written batch by batch as they come (nothing but the list of
    paths and one batch is held in memory), with progress on stderr
    (zoo_adapt.progress). Returns (rows written, files that failed)."""
    output = Path(output)
    if output.is_dir():
        raise ZooAdaptError(f"--output {output} is a folder; give a file name such as predictions.csv")
    fmt = output_format(output)
    entries = expand_paths(paths)
    card = read_any_card(model_path)
    k = min(top_k, len(card.classes))
    every = [f"p_{c}" for c in card.classes] if all_probabilities else []
    columns = (
        ["path", "prediction", "probability"]
        + [f"{w}_{i}" for i in range(1, k + 1) for w in ("label", "probability")]
        + every
        + ["error"]
    )
    rows = failed = 0
    sink = PredictionFile(output, fmt, columns, card.multi_label)
    ticker = Ticker(-(-len(entries) // batch_size), "predicting") if progress and entries else None
    flat: list[dict] = []
    nested: list[dict] = []
    complete = False
    try:
        for r in iter_predictions(
            model_path,
            [],
            tta=tta,
            top_k=len(card.classes) if all_probabilities else k,
            batch_size=batch_size,
            device=device,
            entries=entries,
        ):
            if r.error:
                failed += 1
                if on_error:
                    on_error(r.error)
            flat.append(_flat_row(r, k, card.multi_label, every))
            record = r.to_dict()
            if all_probabilities and not r.error:
                if not card.multi_label:
                    record["top"] = record["top"][:k]
                probabilities = dict(r.top)
                record["probabilities"] = {c: probabilities[c] for c in card.classes}
            nested.append(record)
            rows += 1
            if len(flat) == batch_size or rows == len(entries):
                sink.write(flat, nested)  # a reader (tail -f) sees whole batches as they are done
                if ticker is not None:
                    ticker.update(len(flat))
                flat, nested = [], []
        complete = True
    finally:
        sink.close(complete)
        if ticker is not None:
            ticker.close()
    return rows, failed


def _flat_row(r: Prediction, k: int, multi_label: bool, every: list[str]) -> dict:
    """A CSV/parquet row; multi-label: the prediction is every class at or above its
    threshold, "|"-joined, their probabilities ";"-joined."""
    if r.error:
        return {"path": r.path, "error": r.error}
    row: dict = {"path": r.path}
    if multi_label:
        chosen = r.labels or []
        row["prediction"] = "|".join(c for c, _ in chosen)
        row["probability"] = ";".join(f"{p:.6f}" for _, p in chosen)
    else:
        row["prediction"], row["probability"] = r.top[0]
    for i, (c, p) in enumerate(r.top[:k], 1):
        row[f"label_{i}"], row[f"probability_{i}"] = c, p
    if every:
        row.update({f"p_{c}": p for c, p in r.top})
    return row
