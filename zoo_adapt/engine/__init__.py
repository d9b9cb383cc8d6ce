"""The training engine: the loop (epochs, steps, named events) and the callbacks that
each add one behaviour to it. The job that builds a run around it is
`zoo_adapt.finetune`."""
from .callbacks import Callback, Compile, EarlyStop, MixedPrecision, Progress, WeightAverage
from .loop import EpochRecord, Loop, Step, freeze_plan, seed_everything

__all__ = ["Callback", "Compile", "EarlyStop", "MixedPrecision", "Progress", "WeightAverage", "EpochRecord",
           "Loop", "Step", "freeze_plan", "seed_everything"]
