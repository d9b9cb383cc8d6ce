"""The TensorBoard tracker: event files in RUN/tensorboard/, read by `tensorboard --logdir`:
the scalars, the pictures, the options as a text table and as an hparams entry (the
HParams dashboard lines runs up by their options against their final figures)."""

from __future__ import annotations

import shutil

from zoo_adapt.plugin_api import Tracker

# the figures the HParams dashboard shows beside each run's options
HPARAMS_METRICS = ("final/val_accuracy", "final/val_top5", "final/val_loss", "epoch/val_accuracy", "epoch/train_loss")


def cell(value) -> str:
    """A Markdown table cell: a `|` escaped, a line break made a space."""
    return str(value).replace("|", "\\|").replace("\n", " ")


class TensorBoardTracker(Tracker):
    def start(self, run):
        from torch.utils.tensorboard import SummaryWriter

        if not run.resumed and run.folder.is_dir():
            shutil.rmtree(run.folder)  # a fresh run replaces an earlier run's events in this folder
        # resumed: steps after the checkpoint were logged by the stopped process and are replayed now
        self.writer = SummaryWriter(log_dir=str(run.folder), purge_step=run.step + 1 if run.resumed else None)
        from torch.utils.tensorboard.summary import hparams

        self.hparams_end = hparams({}, {})[2]  # the session's end, written when the run finishes
        if not run.resumed:
            rows = "\n".join(f"| {cell(k)} | {cell(v)} |" for k, v in sorted(run.params.items()))
            self.writer.add_text("options", f"| option | value |\n| --- | --- |\n{rows}", 0)
            self.log_hparams(run.params)
        self.location_text = f"{run.folder}; see it with: tensorboard --logdir {run.folder}"

    def log_hparams(self, params):
        """The options as the HParams plugin's session, its metrics the figures the run logs
        under these tags (the plugin reads their last values from the run's scalars)."""
        from torch.utils.tensorboard.summary import hparams

        # text for booleans too: torch's hparams() would take them for the numbers 0 and 1
        values = {
            k: v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else str(v) for k, v in params.items()
        }
        experiment, start, _ = hparams(values, {tag: 0.0 for tag in HPARAMS_METRICS})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)

    def location(self):
        return self.location_text

    def log_metrics(self, metrics, step, scope):
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_image(self, key, path, step):
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image(key, pixels, step, dataformats="HWC")

    def finish(self, status):
        if status == "finished":
            self.writer.file_writer.add_summary(self.hparams_end)
        self.writer.flush()
        self.writer.close()
