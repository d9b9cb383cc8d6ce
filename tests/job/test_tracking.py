"""Experiment tracking: history.csv, the built-in TensorBoard, MLflow and W&B trackers
read back with their own readers, a third party's tracker registered in-process, and
the one-line errors (unknown tracker, missing package) raised before the run folder is
touched."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from zoo_adapt import Callback, ZooAdaptError, hookimpl
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune
from zoo_adapt.plugin_api import Tracker
from zoo_adapt.testing import registered
from zoo_adapt.zoo.backbone import backbone_of

from helpers import small


def config(out, demo, **kw) -> FinetuneConfig:
    """resnet18 from scratch at 32 px, 2 epochs of 4 steps: seconds."""
    return small(out, demo, **{"out": str(out), "epochs": 2, **kw})


@pytest.fixture(scope="module")
def builtin_trackers():
    """The built-in trackers plugin, from this source tree (installed or not)."""
    import zoo_adapt_plugins.trackers as plugin

    with registered(plugin, "trackers"):
        yield


@pytest.fixture(scope="module")
def tracked(module_tmp, demo, builtin_trackers):
    """One run followed by all three built-in trackers (W&B offline, MLflow in its default
    store: no MLFLOW_* variable, started in the folder that gets ./mlflow.db)."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    tmp = module_tmp / "tracked"
    tmp.mkdir()
    lines = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.delenv("WANDB_DIR", raising=False)
        for name in [k for k in os.environ if k.startswith("MLFLOW_")]:
            mp.delenv(name)
        mp.chdir(tmp)
        result = finetune(
            config(tmp / "run", demo, log=["tensorboard", "mlflow", "wandb"], strategy="finetune", lr_decay=0.5),
            log=lines.append,
        )
    return result, tmp, lines


def test_history_csv_matches_metrics_json(tracked):
    result, *_ = tracked
    metrics = json.loads((result.out / "metrics.json").read_text())
    with open(result.out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(metrics["history"]) == 2
    groups = [g.name for g in backbone_of(result.model).built_groups]
    assert groups == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [c for c in rows[0] if c.startswith("lr_")] == [f"lr_{g}" for g in groups]  # every layer group
    for row, record in zip(rows, metrics["history"]):
        for key, value in record.items():
            if key == "lrs":
                for group, lr in value.items():
                    assert float(row[f"lr_{group}"]) == lr
            elif isinstance(value, list):
                assert row[key] == " ".join(map(str, value))
            elif isinstance(value, float):
                assert float(row[key]) == value  # repr: every digit
            else:
                assert row[key] == ("" if value is None else str(value))  # an empty cell for a missing figure


def test_tensorboard_events_read_back_with_tensorboards_reader(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, *_ = tracked
    events = EventAccumulator(str(result.out / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    steps = [e.step for e in events.Scalars("step/loss")]
    assert steps == list(range(1, 9))  # 2 epochs of 4 optimizer steps, each logged
    groups = [name for name in ("stem", "layer1", "layer2", "layer3", "layer4", "head")]
    for group in groups:
        assert f"step/lr/{group}" in tags["scalars"] and f"epoch/lr/{group}" in tags["scalars"]
    val = [(e.step, e.value) for e in events.Scalars("epoch/val_accuracy")]
    assert val == [(r["epoch"], pytest.approx(r["val_accuracy"])) for r in result.history]
    assert events.Scalars("final/val_accuracy")[0].value == pytest.approx(result.metrics["val_accuracy"])
    assert {"curves", "confusion_matrix"} <= set(tags["images"])


def test_tensorboard_options_table_and_hparams_entry(tmp_path, builtin_trackers):
    """A `|` or a line break in a value stays in its cell; the options are an HParams
    session whose metrics are the figures the run logs, ended when the run finishes."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from zoo_adapt.zoo.tracker_api import TrackerRun
    from zoo_adapt.zoo.trackers import build_tracker
    from zoo_adapt.zoo.trackers import check as check_trackers

    (info,) = check_trackers(["tensorboard"])
    tracker = build_tracker(info)
    params = {"backbone": "resnet18", "label_delimiter": "|", "note": "two\nlines", "lr": 0.002, "tta": True}
    tracker.start(TrackerRun("run", tmp_path, tmp_path / "tensorboard", params, epochs=1))
    assert (
        tracker.location()
        == f"{tmp_path / 'tensorboard'}; see it with: tensorboard --logdir {tmp_path / 'tensorboard'}"
    )
    tracker.log_metrics({"final/val_accuracy": 0.75}, 1, "final")
    tracker.finish("finished")
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    text = events.Tensors("options/text_summary")[0].tensor_proto.string_val[0].decode()
    rows = text.splitlines()
    assert "| label_delimiter | \\| |" in rows and "| note | two lines |" in rows
    assert all(len(re.findall(r"(?<!\\)\|", row)) == 3 for row in rows)  # every row: two cells, nothing more
    content = events.PluginTagToContent("hparams")
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(blob) for tag, blob in content.items()}
    start = next(d.session_start_info for d in data.values() if d.HasField("session_start_info"))
    assert start.hparams["backbone"].string_value == "resnet18" and start.hparams["lr"].number_value == 0.002
    assert start.hparams["tta"].string_value == "True" and start.hparams["label_delimiter"].string_value == "|"
    experiment = next(d.experiment for d in data.values() if d.HasField("experiment"))
    assert "final/val_accuracy" in [m.name.tag for m in experiment.metric_infos]
    assert any(d.HasField("session_end_info") for d in data.values())


READ_BACK = """
import json, mlflow, numpy as np
from mlflow.tracking import MlflowClient
client = MlflowClient()
experiment = client.get_experiment_by_name("zoo-adapt")
(run,) = client.search_runs([experiment.experiment_id])
(model,) = client.search_logged_models([experiment.experiment_id])
history = client.get_metric_history(run.info.run_id, "epoch/val_accuracy")
loaded = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
images = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
print(json.dumps({
    "uri": mlflow.get_tracking_uri(), "status": run.info.status, "name": run.info.run_name,
    "params": run.data.params, "metrics": run.data.metrics,
    "history": [[m.step, m.value] for m in history],
    "step_lr_head": len(client.get_metric_history(run.info.run_id, "step/lr/head")),
    "artifacts": [a.path for a in client.list_artifacts(run.info.run_id)],
    "run_id": run.info.run_id, "model_id": model.model_id,
    "model_run": model.source_run_id, "model_outputs": [m.model_id for m in run.outputs.model_outputs],
    "model_files": [a.path for a in client.list_logged_model_artifacts(model.model_id)],
    "signature": loaded.metadata.signature.to_dict(), "classes": loaded.metadata.metadata["classes"],
    "logits": np.asarray(loaded.predict(images)).tolist(),
}))
"""


def test_mlflow_run_read_back_with_mlflows_client_in_a_fresh_process(tracked):
    """No MLFLOW_* variable anywhere: the run went to MLflow's own default store, which a
    fresh `MlflowClient()` in that folder reads (no file-store opt-in), and the model
    is an MLflow model that pyfunc loads and that predicts as load_plain does."""
    import numpy as np
    import torch

    from zoo_adapt import load_plain

    result, tmp, lines = tracked
    assert (tmp / "mlflow.db").is_file() and not (tmp / "mlruns" / "0" / "meta.yaml").exists()
    said = [line for line in lines if line.startswith("--log mlflow: ")]
    assert said and f"sqlite:///{tmp.resolve() / 'mlflow.db'}" in said[0] and "mlflow ui" in said[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run(
        [sys.executable, "-c", READ_BACK], cwd=tmp, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    back = json.loads(out.stdout.strip().splitlines()[-1])
    assert back["uri"] == f"sqlite:///{tmp.resolve() / 'mlflow.db'}"
    assert back["status"] == "FINISHED" and back["name"] == "run"
    assert back["params"]["backbone"] == "resnet18" and back["params"]["epochs"] == "2"
    assert back["history"] == [[r["epoch"], pytest.approx(r["val_accuracy"])] for r in result.history]
    assert back["step_lr_head"] == 8
    assert back["metrics"]["final/val_accuracy"] == pytest.approx(result.metrics["val_accuracy"])
    assert {"model.safetensors", "metrics.json", "history.csv", "config.toml", "README.md", "curves.png"} <= set(
        back["artifacts"]
    )
    assert back["model_run"] == back["run_id"] and back["model_outputs"] == [back["model_id"]]  # the run's model
    assert back["run_id"] in said[0]
    assert {"MLmodel", "input_example.json", "requirements.txt"} <= set(back["model_files"])
    assert json.loads(back["signature"]["inputs"])[0]["tensor-spec"]["shape"] == [-1, 3, 32, 32]
    assert back["classes"] == list(result.metrics["classes"])
    plain, _ = load_plain(result.out / "model.safetensors")
    images = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = plain(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(np.asarray(back["logits"]), expected, atol=1e-4)


def test_wandb_offline_files_written(tracked):
    result, *_ = tracked
    (offline,) = (result.out / "wandb").glob("offline-run-*")
    (records,) = offline.glob("run-*.wandb")
    written = records.read_bytes()
    for key in (b"epoch/val_accuracy", b"step/loss", b"step/lr/head", b"final/val_accuracy"):
        assert key in written
    assert list((offline / "files" / "media").rglob("curves*.png"))


class Recorder(Tracker):
    """A third party's tracker: remembers every call."""

    def __init__(self, calls):
        self.calls = calls

    def start(self, run):
        self.calls.append(("start", run))

    def log_metrics(self, metrics, step, scope):
        self.calls.append((scope, step, dict(metrics)))

    def log_image(self, key, path, step):
        self.calls.append(("image", key, path.is_file()))

    def log_artifact(self, path, name):
        self.calls.append(("artifact", name, path.is_file()))

    def state_dict(self):
        return {"run_id": "abc"}

    def finish(self, status):
        self.calls.append(("finish", status))


class RecorderPlugin:
    def __init__(self, requires=()):
        self.calls, self.requires = [], requires

    @hookimpl
    def register_trackers(self, register):
        register(
            "recorder",
            lambda: Recorder(self.calls),
            "records calls",
            requires=self.requires,
            install="pip install zoo-adapt-recorder",
        )


class Flaky(Tracker):
    def log_metrics(self, metrics, step, scope):
        raise ConnectionError("server went away")


class FlakyPlugin:
    @hookimpl
    def register_trackers(self, register):
        register("flaky", Flaky)


def test_third_party_tracker_plugin_receives_the_figures(tmp_path, demo, plugin, run_cli):
    """Beside it, a tracker failing mid-run: reported once, the others and training go on."""
    recorder = plugin(RecorderPlugin(), "recorder_plugin")
    plugin(FlakyPlugin(), "flaky_plugin")
    listed = json.loads(run_cli("trackers", "--json").output)
    assert {"name": "recorder", "plugin": "recorder_plugin"}.items() <= next(
        t for t in listed if t["name"] == "recorder"
    ).items()
    with pytest.warns(UserWarning, match="--log flaky: the tracker failed in log_metrics .*server went away") as w:
        result = finetune(config(tmp_path / "run", demo, log=["flaky", "recorder"], strategy="finetune"), log=None)
    assert len([x for x in w if "--log flaky" in str(x.message)]) == 1
    assert result.metrics["finished"] and (result.out / "model.safetensors").is_file()
    calls = recorder.calls
    assert calls[0][0] == "start" and calls[-1] == ("finish", "finished")
    run = calls[0][1]
    assert run.name == "run" and run.params["backbone"] == "resnet18" and not run.resumed
    steps = [c for c in calls if c[0] == "step"]
    assert [c[1] for c in steps] == list(range(1, 9))
    assert {"step/loss", "step/accuracy", "step/lr/stem", "step/lr/head"} <= set(steps[0][2])
    assert steps[0][2]["step/lr/stem"] < steps[0][2]["step/lr/head"]  # discriminative rates, per group
    epochs = [c for c in calls if c[0] == "epoch"]
    assert [c[2]["epoch/val_accuracy"] for c in epochs] == [r["val_accuracy"] for r in result.history]
    assert [c[2]["epoch/train_loss"] for c in epochs] == [r["train_loss"] for r in result.history]
    (final,) = [c for c in calls if c[0] == "final"]
    assert final[2]["final/val_accuracy"] == result.metrics["val_accuracy"]
    assert ("image", "confusion_matrix", True) in calls and ("artifact", "model.safetensors", True) in calls
    assert ("artifact", "README.md", True) in calls


def test_a_resumed_run_gives_the_tracker_its_state_back(tmp_path, demo, plugin):
    recorder = plugin(RecorderPlugin(), "recorder_plugin")

    class Interrupt(Callback):
        def step_end(self, loop, step):
            if loop.epoch == 1:
                raise KeyboardInterrupt

    cfg = config(tmp_path / "run", demo, log=["recorder"])
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, callbacks=[Interrupt()], log=None)
    assert recorder.calls[-1] == ("finish", "interrupted")
    recorder.calls.clear()
    cfg.resume = True
    finetune(cfg, log=None)
    run = recorder.calls[0][1]
    assert run.resumed and run.state == {"run_id": "abc"} and run.step == 4
    assert [c[1] for c in recorder.calls if c[0] == "step"] == [5, 6, 7, 8]


def test_missing_tracker_package_is_one_line_before_the_folder_is_touched(tmp_path, demo, plugin, run_cli):
    plugin(RecorderPlugin(requires=("zoo_adapt_no_such_module",)), "recorder_plugin")
    out = tmp_path / "run"
    with pytest.raises(
        ZooAdaptError,
        match="--log recorder needs the package 'zoo_adapt_no_such_module'.*pip install zoo-adapt-recorder",
    ):
        finetune(config(out, demo, log=["recorder"]), log=None)
    assert not out.exists()
    result = run_cli(
        "finetune", "--backbone", "resnet18", "--no-pretrained", "--data", demo, "--out", out, "--log", "nope"
    )
    assert result.exit_code == 1 and "--log nope: no such tracker" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_the_built_in_trackers_name_their_extras(monkeypatch, builtin_trackers):
    import importlib.util

    from zoo_adapt.zoo.trackers import check

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("tensorboard", "mlflow", "wandb") else real(name, *a),
    )
    for name in ("tensorboard", "mlflow", "wandb"):
        with pytest.raises(ZooAdaptError, match=rf'--log {name} needs .*pip install "zoo-adapt\[{name}\]"'):
            check([name])


def test_two_plugins_registering_one_tracker_name_are_both_named(tmp_path, demo, plugin):
    class Twin:
        @hookimpl
        def register_trackers(self, register):
            register("twin", Tracker)

    plugin(Twin(), "twin_a")
    plugin(Twin(), "twin_b")
    with pytest.warns(UserWarning):
        with pytest.raises(
            ZooAdaptError, match="tracker 'twin' is claimed by both plugin 'twin_a'.*and plugin 'twin_b'"
        ):
            finetune(config(tmp_path / "run", demo, log=["twin"]), log=None)


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb"])
def test_built_in_trackers_pass_the_tracker_checks_resume_included(name, tmp_path, monkeypatch, builtin_trackers):
    from zoo_adapt.testing import check_tracker

    pytest.importorskip(name)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    tracker = check_tracker(name, tmp_path)
    if name == "mlflow":
        from mlflow.tracking import MlflowClient

        assert tracker.location().startswith(f"MLflow run {tracker.run_id} (experiment 'zoo-adapt') in {store}")
        client = MlflowClient(tracking_uri=store)
        run = client.get_run(tracker.run_id)  # the resumed tracker went on in the first one's MLflow run
        assert run.info.status == "FINISHED"
        assert [m.value for m in client.get_metric_history(tracker.run_id, "epoch/val_accuracy")] == [0.5, 1.0]
    if name == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
        assert [e.step for e in events.Scalars("epoch/val_accuracy")] == [1, 2]
        assert [e.step for e in events.Scalars("step/loss")] == [1, 2]
