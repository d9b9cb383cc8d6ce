"""Every random draw of a run follows from its seed, the epoch and (for streams of
one process) the process's rank, so a resumed run replays exactly what an
uninterrupted one would have drawn, and processes under torchrun agree on what they
share. The rules live here, once; the numbers are part of what makes a run
reproducible, so they never change."""

from __future__ import annotations

import random

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int) -> int:
    """An epoch's shared draws: the sample order and --balance sampler's weighted draw
    (every process computes the same, then takes its shard)."""
    return seed * 1_000_003 + epoch


def process_seed(seed: int, epoch: int, rank: int) -> int:
    """One process's own draws in an epoch: crops and flips of images held on the
    device, the cached view chosen per image."""
    return seed * 1_000_003 + epoch * 7919 + rank


def global_seed(seed: int, epoch: int) -> int:
    """Python's, numpy's and torch's global generators at the start of an epoch
    (dropout, stochastic depth, a method's own randomness)."""
    return seed * 1000 + epoch


def image_seed(seed: int, epoch: int, index: int, repeat: int = 0) -> str:
    """An image's augmentation in an epoch, whichever worker or process decodes it; an
    image drawn again in the same epoch (a weighted order) gets its k-th repeat added,
    so its copies differ."""
    return f"{seed}:{epoch}:{index}" + (f":{repeat}" if repeat else "")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
