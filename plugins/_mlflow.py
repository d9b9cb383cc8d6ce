"""The MLflow tracker: one MLflow run per zoo-adapt run, in $MLFLOW_TRACKING_URI (any
server or store) or, when that is not set, MLflow's own default for a fresh folder, the
SQLite store `sqlite:///mlflow.db` in the current directory (its artifacts in ./mlruns):
MLflow 3 keeps the ./mlruns file store in maintenance mode, and `MlflowClient()` or
`mlflow ui` started in the same folder find the run without any variable. The run's first
lines say where it is. The experiment is $MLFLOW_EXPERIMENT_NAME or "zoo-adapt". A
resumed run continues its MLflow run.

Beside the run's files, the exported model is logged as an MLflow model (the PyTorch
flavour, with a signature and an input example), so `mlflow models serve`, the model
registry and `mlflow.pyfunc.load_model` take it: saved with torch.export (needs only torch
to load), or pickled where the model cannot be exported that way."""

from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from zoo_adapt.plugin_api import Tracker

STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
BATCH = 500  # metrics per request (MLflow takes at most 1000)
MODEL = "model"  # the MLflow model's name in the run
EXAMPLE_BATCH = 2  # torch.export keeps a batch dimension of 1 fixed: the example has two images


def metric_key(key: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and spaces."""
    return re.sub(r"[^\w\-./ ]", "_", key)


def default_uri() -> str:
    """MLflow's default store for a folder without an ./mlruns file store: SQLite here."""
    return "sqlite:///" + str(Path("mlflow.db").resolve())


class MLflowTracker(Tracker):
    def start(self, run):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or run.state.get("tracking_uri") or default_uri()
        self.uri, self.pending = uri, []
        self.classes = list(run.classes)
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = run.state.get("run_id")
        if self.run_id:
            self.client.update_run(self.run_id, status="RUNNING")
            self.experiment_id = self.client.get_run(self.run_id).info.experiment_id
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "zoo-adapt"
        experiment = self.client.get_experiment_by_name(name)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        created = self.client.create_run(
            self.experiment_id, run_name=run.name, tags={"zoo_adapt.job.run_folder": str(run.out.resolve())}
        )
        self.run_id = created.info.run_id
        params = [Param(metric_key(k), str(v)[:6000]) for k, v in sorted(run.params.items())]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def location(self):
        experiment = self.client.get_experiment(self.experiment_id).name
        where = f"MLflow run {self.run_id} (experiment '{experiment}') in {self.uri}"
        if "://" not in self.uri or self.uri.startswith(("sqlite:", "file:")):
            where += f"; see it with: mlflow ui --backend-store-uri {self.uri}"
        return where

    def log_metrics(self, metrics, step, scope):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(metric_key(k), float(v), now, int(step)) for k, v in metrics.items()]
        if scope != "step" or len(self.pending) >= BATCH:
            self.flush()

    def flush(self):
        while self.pending:
            batch, self.pending = self.pending[:BATCH], self.pending[BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def log_image(self, key, path, step):
        self.log_artifact(path, f"{key}.png")

    def log_artifact(self, path, name):
        folder = os.path.dirname(name) or None
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)
        if name == "model.safetensors":
            self.log_model(Path(path))

    def log_model(self, path: Path) -> None:
        """The export as an MLflow model of the run: the plain upstream module (as
        `zoo_adapt.load_plain` builds it) taking normalized images, logits out; the
        classes and the preprocessing in its metadata."""
        import mlflow
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        from zoo_adapt.plugin_api import load_plain, read_card

        model, _ = load_plain(path)
        card, _ = read_card(path)
        norm = card.normalization
        example = np.zeros((EXAMPLE_BATCH, *norm.input_size), np.float32)  # mean-colour images, normalized
        with torch.no_grad():
            outputs = model(torch.from_numpy(example)).numpy()
        metadata = {
            "classes": card.classes,
            "multi_label": card.multi_label,
            "backbone": card.backbone,
            "input": "float32 images (batch, channels, height, width), normalized: (pixel / 255 - mean) / std",
            "mean": list(norm.mean),
            "std": list(norm.std),
            "input_size": list(norm.input_size),
            "interpolation": norm.interpolation,
            "crop_pct": norm.crop_pct,
            "outputs": "logits, one per class (softmax; sigmoid for a multi-label model)",
        }
        logged = self.client.create_logged_model(self.experiment_id, name=MODEL, source_run_id=self.run_id)
        common = dict(
            name=MODEL,
            model_id=logged.model_id,
            run_id=self.run_id,
            signature=infer_signature(example, outputs),
            input_example=example,
            metadata=metadata,
        )
        torch_requirement = f"torch=={torch.__version__.split('+')[0]}"
        with tracking_uri(self.uri), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow's notes on requirements and serving checks
            try:
                mlflow.pytorch.log_model(
                    model, serialization_format="pt2", pip_requirements=[torch_requirement], **common
                )
            except Exception:  # torch.export cannot trace every model: pickled, it needs its library to load
                mlflow.pytorch.log_model(
                    model,
                    serialization_format="pickle",
                    pip_requirements=[torch_requirement, *library_requirements(card.library)],
                    **common,
                )

    def state_dict(self):
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def finish(self, status):
        self.flush()
        self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))


def library_requirements(library: str) -> list[str]:
    """What a pickled model of `library` needs to load, pinned to what made it."""
    from importlib.metadata import PackageNotFoundError, version

    names = {"timm": ["timm"], "torchvision": ["torchvision"]}.get(library, ["zoo-adapt"])
    pinned = []
    for name in names:
        try:
            pinned.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(name)
    return pinned


@contextlib.contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's model logging reads its global tracking URI: point it at this run's store
    meanwhile, then put back what was there (a URI set in code, or $MLFLOW_TRACKING_URI)."""
    import mlflow

    env = os.environ.get("MLFLOW_TRACKING_URI")
    current = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None if current == env else current)  # type: ignore[arg-type]  # None: the default
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env
