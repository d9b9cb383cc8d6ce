"""Using an exported model: score it on a labelled folder, or predict images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch.utils.data import DataLoader

from .data import (
    IMAGE_SUFFIXES,
    ImageDataset,
    image_files,
    open_image,
    scan_folder,
    split_dirs,
    worker_error,
)
from .errors import ZooAdaptError
from .evaluation import Evaluation, evaluate, predict_proba
from .export import load_model
from .train import resolve_device
from .transforms import eval_transform


def labelled_folder(path: str | Path) -> Path:
    """A folder of class subfolders; a dataset root with train/ and val/ or test/ means its
    held-out split."""
    path = Path(path)
    train, held_out = split_dirs(path)
    if train is not None and held_out is not None:
        return held_out
    return path


def evaluate_folder(model_path: str | Path, data: str | Path, tta: bool = False, batch_size: int = 64,
                    device: str = "auto", workers: int = 0) -> Evaluation:
    """Accuracy, top-5, per-class accuracy and confusion matrix of an exported model on a
    labelled ImageFolder whose classes are (a subset of) the model's."""
    dev = resolve_device(device)
    model, card = load_model(model_path, dev)
    samples = scan_folder(labelled_folder(data), classes=card.classes)
    loader = DataLoader(ImageDataset(samples, eval_transform(card.normalization)), batch_size=batch_size,
                        num_workers=workers)
    try:
        return evaluate(model, loader, card.classes, dev, tta=tta, autocast=dev.type == "cuda", flip=card.hflip)
    except ZooAdaptError as e:
        raise worker_error(e) from None


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
    transform = eval_transform(card.normalization)
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
            probs = predict_proba(model, torch.stack(batch).to(dev), tta=tta, autocast=dev.type == "cuda",
                                  flip=card.hflip)
            values, indices = probs.topk(k, -1)
            for pred, v, i in zip(kept, values.tolist(), indices.tolist()):
                pred.top = [(card.classes[c], p) for c, p in zip(i, v)]
                results.append(pred)
    order = {str(f): n for n, f in enumerate(files)}
    return sorted(results, key=lambda r: order[r.path])
