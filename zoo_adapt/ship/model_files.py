"""What --model names, resolved without torch (so the CLI says a wrong path at once): a
model file, or a run folder meaning its model.safetensors, or a cross-validated run's
ensemble.json (its fold models averaged)."""

from __future__ import annotations

from pathlib import Path

from zoo_adapt.errors import ZooAdaptError

MODEL_FILE = "model.safetensors"
ENSEMBLE_FILE = "ensemble.json"


def model_path(path: str | Path, ensemble: bool = True) -> Path:
    """The file (or ensemble folder) a --model value means; `ensemble=False` for the
    commands that take one network (analyse, export)."""
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / ENSEMBLE_FILE).is_file():
        if ensemble:
            return path
        if not (path / MODEL_FILE).is_file():
            raise ZooAdaptError(
                f"--model {path}: a cross-validated run's ensemble takes several networks; give one of its "
                f"fold models (its folds' {MODEL_FILE})"
            )
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    raise ZooAdaptError(
        f"--model {path}: the folder holds no {MODEL_FILE}"
        + (f" or {ENSEMBLE_FILE}" if ensemble else "")
        + "; give a run folder written by zoo-adapt finetune, or a model file"
    )
