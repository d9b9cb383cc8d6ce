"""Using an exported model: score it on a labelled folder, or predict images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from .data import IMAGE_SUFFIXES, ImageDataset, image_files, open_image, scan_folder, split_dirs
from .device import prepare, resolve_device
from .errors import ZooAdaptError
from .evaluation import Evaluation, evaluate, predict_proba
from .export import load_model
from .pipeline import EpochOrder, LoaderBatches, default_workers
from .transforms import EvalTransform, normalize


def labelled_folder(path: str | Path) -> Path:
    """A folder of class subfolders; a dataset root with train/ and val/ or test/ means its
    held-out split."""
    path = Path(path)
    train, held_out = split_dirs(path)
    if train is not None and held_out is not None:
        return held_out
    return path


def evaluate_folder(model_path: str | Path, data: str | Path, tta: bool = False, batch_size: int = 64,
                    device: str = "auto", workers: int | None = None) -> Evaluation:
    """Accuracy, top-5, per-class accuracy and confusion matrix of an exported model on a
    labelled ImageFolder whose classes are (a subset of) the model's."""
    dev = resolve_device(device)
    prepare(dev)
    model, card = load_model(model_path, dev)
    samples = scan_folder(labelled_folder(data), classes=card.classes)
    dataset = ImageDataset(samples, EvalTransform(card.normalization))
    batches = LoaderBatches(dataset, batch_size=batch_size, norm=card.normalization, device=dev,
                            order=EpochOrder(len(dataset), shuffle=False),
                            workers=default_workers(dev) if workers is None else workers)
    return evaluate(model, batches, card.classes, tta=tta, autocast=dev.type == "cuda", flip=card.hflip)


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "prediction": self.top[0][0],
                "top": [{"class": c, "probability": p} for c, p in self.top]}


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Image files named directly or found below folders."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = image_files(p)
            if not found:
                raise ZooAdaptError(f"{p} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ZooAdaptError(f"no such file or folder: {p}")
    return out


def predict_paths(model_path: str | Path, paths: Iterable[str | Path], tta: bool = False, top_k: int = 5,
                  batch_size: int = 32, device: str = "auto") -> list[Prediction]:
    """Top-k classes with probabilities for each image; unreadable files get an error
    entry instead of stopping the others."""
    dev = resolve_device(device)
    model, card = load_model(model_path, dev)
    transform = EvalTransform(card.normalization)
    files = expand_paths(paths)
    k = max(1, min(top_k, len(card.classes)))
    results: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        batch, kept = [], []
        for f in files[start:start + batch_size]:
            try:
                batch.append(transform(open_image(f)))
                kept.append(Prediction(str(f)))
            except ZooAdaptError as e:
                results.append(Prediction(str(f), error=str(e)))
        if batch:
            x = normalize(torch.stack(batch).to(dev), card.normalization)
            probs = predict_proba(model, x, tta=tta, autocast=dev.type == "cuda", flip=card.hflip)
            values, indices = probs.topk(k, -1)
            for pred, v, i in zip(kept, values.tolist(), indices.tolist()):
                pred.top = [(card.classes[c], p) for c, p in zip(i, v)]
                results.append(pred)
    order = {str(f): n for n, f in enumerate(files)}
    return sorted(results, key=lambda r: order[r.path])
