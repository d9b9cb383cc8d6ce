"""The Weights & Biases tracker: one W&B run per zoo-adapt run, in $WANDB_PROJECT or
"zoo-adapt", written under RUN/wandb/ unless $WANDB_DIR says otherwise. Offline
(WANDB_MODE=offline) it needs no network or account; `wandb sync RUN/wandb/offline-run-*`
uploads it later. A resumed run continues its W&B run."""

from __future__ import annotations

import os

from zoo_adapt.plugin_api import Tracker

EXIT_CODES = {"finished": 0, "interrupted": 130, "failed": 1}


class WandbTracker(Tracker):
    def start(self, run):
        import wandb

        kwargs = dict(
            project=os.environ.get("WANDB_PROJECT") or "zoo-adapt",
            name=run.name,
            config=dict(run.params),
            reinit="create_new",
            settings=wandb.Settings(console="off"),
        )
        if not os.environ.get("WANDB_DIR"):
            kwargs["dir"] = str(run.out)
        if run.state.get("run_id"):
            kwargs.update(id=run.state["run_id"], resume="allow")
        self.run = wandb.init(**kwargs)
        for axis, keys in (("global_step", "step/*"), ("epoch", "epoch/*"), ("epoch", "images/*")):
            self.run.define_metric(axis)
            self.run.define_metric(keys, step_metric=axis)
        self.files = []

    def log_metrics(self, metrics, step, scope):
        if scope == "final":
            self.run.summary.update(metrics)
        else:
            self.run.log({**metrics, "global_step" if scope == "step" else "epoch": step})

    def log_image(self, key, path, step):
        import wandb

        self.run.log({f"images/{key}": wandb.Image(str(path)), "epoch": step})

    def log_artifact(self, path, name):
        self.files.append((str(path), name))

    def state_dict(self):
        return {"run_id": self.run.id}

    def finish(self, status):
        import wandb

        if status == "finished" and self.files:
            artifact = wandb.Artifact(f"run-{self.run.id}", type="model")
            for path, name in self.files:
                artifact.add_file(path, name=name)
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=EXIT_CODES.get(status, 1))
