"""The TensorBoard tracker: event files in RUN/tensorboard/, read by `tensorboard --logdir`."""

from __future__ import annotations

import shutil

from zoo_adapt.plugin_api import Tracker


class TensorBoardTracker(Tracker):
    def start(self, run):
        from torch.utils.tensorboard import SummaryWriter

        if not run.resumed and run.folder.is_dir():
            shutil.rmtree(run.folder)  # a fresh run replaces an earlier run's events in this folder
        # resumed: steps after the checkpoint were logged by the stopped process and are replayed now
        self.writer = SummaryWriter(log_dir=str(run.folder), purge_step=run.step + 1 if run.resumed else None)
        if not run.resumed:
            rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(run.params.items()))
            self.writer.add_text("options", f"| option | value |\n| --- | --- |\n{rows}", 0)

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
        self.writer.flush()
        self.writer.close()
