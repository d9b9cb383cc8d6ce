"""What a run that stops early says: Ctrl-C or SIGTERM (the folder left resumable, or
clean before the first checkpoint), or another torchrun process lost (not a bug: the
checkpoint can go on). Said truthfully from what the folder holds."""

from __future__ import annotations

from zoo_adapt.engine import distributed
from zoo_adapt.engine.loop import Loop
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.job.run_folder import CHECKPOINT, RunFolder


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run, after the folder was left resumable (or clean)."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.message, self.signal_name = message, signal_name


def interrupted(folder: RunFolder, main: bool, e: KeyboardInterrupt, loop: Loop) -> Interrupted:
    """What an interrupt leaves (rank 0, `main`, speaks for the folder)."""
    signal_name = getattr(e, "signal_name", "SIGINT")
    how = "interrupted" if signal_name == "SIGINT" else f"stopped by {signal_name}"
    resume = f"`zoo-adapt finetune --out {folder.out} --resume`"
    if not folder.has_checkpoint():
        if main:
            folder.discard()
        return Interrupted(
            f"{how} in epoch 1, before the first checkpoint: nothing can be resumed yet, and "
            f"{folder.out} was cleaned up; start the run again",
            signal_name,
        )
    if loop.epoch >= len(loop.plan):
        return Interrupted(
            f"{how} while writing the results; {folder.path(CHECKPOINT)} holds all "
            f"{len(loop.plan)} epochs: {resume} writes them",
            signal_name,
        )
    return Interrupted(
        f"{how} in epoch {loop.epoch + 1}; {folder.path(CHECKPOINT)} holds epoch {loop.epoch} "
        f"of {len(loop.plan)}: continue with {resume}",
        signal_name,
    )


def lost_peer(folder: RunFolder, e: Exception, loop: Loop) -> ZooAdaptError:
    """Another process of a torchrun run stopped (killed, out of memory, its own
    error): what this one saw is not a bug, and what the checkpoint holds can go on."""
    what = f"another process of this run stopped ({distributed.lost_how(str(e))}) in epoch {loop.epoch + 1}"
    if not folder.has_checkpoint():
        return ZooAdaptError(f"{what}, before the first checkpoint: nothing can be resumed yet; start the run again")
    held = min(loop.epoch, len(loop.plan))
    return ZooAdaptError(
        f"{what}; the checkpoint of epoch {held} ({folder.path(CHECKPOINT)}) can be resumed with the same "
        f"torchrun command and `zoo-adapt finetune --out {folder.out} --resume`"
    )
