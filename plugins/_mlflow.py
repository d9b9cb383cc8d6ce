"""The MLflow tracker: one MLflow run per zoo-adapt run, in $MLFLOW_TRACKING_URI (any
server or store) or, when that is not set, a local file store ./mlruns. The experiment
is $MLFLOW_EXPERIMENT_NAME or "zoo-adapt". A resumed run continues its MLflow run."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from zoo_adapt.plugin_api import Tracker

STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
BATCH = 500  # metrics per request (MLflow takes at most 1000)


def metric_key(key: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and spaces."""
    return re.sub(r"[^\w\-./ ]", "_", key)


class MLflowTracker(Tracker):
    def start(self, run):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or run.state.get("tracking_uri")
        if not uri:
            uri = Path("mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks to opt in to the file store
        self.uri, self.pending = uri, []
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = run.state.get("run_id")
        if self.run_id:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "zoo-adapt"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        created = self.client.create_run(
            experiment_id, run_name=run.name, tags={"zoo_adapt.job.run_folder": str(run.out.resolve())}
        )
        self.run_id = created.info.run_id
        params = [Param(metric_key(k), str(v)[:6000]) for k, v in sorted(run.params.items())]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])

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

    def state_dict(self):
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def finish(self, status):
        self.flush()
        self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))
