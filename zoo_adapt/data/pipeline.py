"""Batches on the device, the way the loop consumes them: `(x, y)` with `x` float,
normalized, on the training device.

Three sources share one interface (`Batches`): images decoded by loader workers
(`LoaderBatches`), images held decoded on the device (`device_images.DeviceImages`),
and cached features of a frozen body (`feature_cache.FeatureBatches`). Every source
orders its samples with `EpochOrder`, so an epoch's order, and each process's shard
under torchrun, follows from the seed and the epoch number alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Sampler

from zoo_adapt.data.folders import ImageSource, worker_error
from zoo_adapt.data.transforms import EvalTransform, normalize
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.seeds import epoch_seed, image_seed
from zoo_adapt.zoo.backbone import Normalization


class Batches(Protocol):
    num_samples: int  # samples this process sees per epoch

    def __len__(self) -> int: ...  # batches per epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def set_epoch(self, epoch: int) -> None: ...


class EpochOrder(Sampler[int]):
    """The sample order of one epoch: a permutation seeded by (seed, epoch) when
    shuffling, else 0..n-1; under data parallelism each of `world` processes takes every
    `world`-th sample from `rank` on. Training shards are padded by wrapping around so
    every process takes the same number of steps; evaluation shards never are, so every
    image counts exactly once.

    With `weights` (one per sample; --balance sampler), a shuffled epoch is instead `n`
    draws with replacement in proportion to the weights, seeded the same way, so rare
    classes come up as often as common ones and every process shards the same draw."""

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        pad: bool = False,
        weights: list[float] | None = None,
    ):
        self.n, self.shuffle, self.seed, self.rank, self.world, self.pad = n, shuffle, seed, rank, world, pad
        self.weights = torch.as_tensor(weights, dtype=torch.float64) if weights is not None else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> list[int]:
        if self.shuffle and self.weights is not None:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.pad and self.world > 1 and self.n % self.world:
            order += order[: self.world - self.n % self.world]
        return order[self.rank :: self.world]

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        if self.pad and self.world > 1:
            return -(-self.n // self.world)
        return len(range(self.rank, self.n, self.world))


def batch_sizes(n: int, batch_size: int) -> list[int]:
    """Batches of `batch_size`, the last one holding the rest; a rest of one image joins
    the batch before it (BatchNorm cannot train on a batch of one), so no image is
    dropped."""
    if n <= batch_size:
        return [n] if n else []
    sizes = [batch_size] * (n // batch_size)
    rest = n % batch_size
    if rest == 1:
        sizes[-1] += 1
    elif rest:
        sizes.append(rest)
    return sizes


class EpochBatches(Sampler[list]):
    """An EpochOrder cut into `batch_sizes`. With `seeded`, each index comes with the
    seed of its image's augmentation in this epoch (`seeds.image_seed`), so what an
    image becomes depends on neither the loader worker nor the process that reads it."""

    def __init__(self, order: EpochOrder, batch_size: int, seeded: bool = False):
        self.order, self.batch_size, self.seeded = order, batch_size, seeded

    def __iter__(self):
        indices, start = self.order.indices(), 0
        if self.seeded:
            repeats: dict[int, int] = {}
            seeded = []
            for i in indices:
                k = repeats[i] = repeats.get(i, -1) + 1
                seeded.append((i, image_seed(self.order.seed, self.order.epoch, i, k)))
            indices = seeded
        for size in batch_sizes(len(indices), self.batch_size):
            yield indices[start : start + size]
            start += size

    def __len__(self) -> int:
        return len(batch_sizes(len(self.order), self.batch_size))


def device_index(indices: list[int], device: torch.device) -> torch.Tensor:
    """`indices` as an int64 tensor on `device`. On CUDA it travels through pinned memory
    without waiting: a plain copy from the host waits for every kernel already queued
    (the step before), so each batch would stall the GPU's pipeline."""
    index = torch.tensor(indices, dtype=torch.int64)
    if device.type != "cuda":
        return index.to(device)
    return index.pin_memory().to(device, non_blocking=True)


def default_workers(device: torch.device) -> int:
    """Loader processes: on CUDA every core but one (decoding is the bottleneck there);
    on a CPU the model needs the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return max(1, cores // world - 1)
    return 0 if cores <= 4 else min(4, cores // 4)


class LoaderBatches:
    """Images decoded by loader workers (uint8), moved to the device and normalized
    there. On CUDA the next batch is copied and normalized on a side stream while the
    current one trains (timm's prefetcher); workers persist across epochs."""

    def __init__(
        self,
        dataset: ImageSource,
        *,
        batch_size: int,
        norm: Normalization | None,
        device: torch.device,
        order: EpochOrder,
        workers: int,
        channels_last: bool = False,
    ):
        self.dataset, self.order, self.device, self.norm = dataset, order, device, norm
        self.channels_last = channels_last
        self.num_samples = len(order)
        cuda = device.type == "cuda"
        self.loader: DataLoader = DataLoader(
            dataset,  # type: ignore[arg-type]  # any ImageSource: DataLoader needs only len and getitem
            batch_sampler=EpochBatches(order, batch_size, seeded=True),
            num_workers=workers,
            pin_memory=cuda,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def _prepare(self, batch):
        x, y = batch
        x = x.to(self.device, non_blocking=True)
        if self.norm is not None:
            x = normalize(x, self.norm, self.channels_last)
        return x, torch.as_tensor(y).to(self.device, non_blocking=True)

    def __iter__(self):
        try:
            if self.device.type != "cuda":
                for batch in self.loader:
                    yield self._prepare(batch)
                return
            stream = torch.cuda.Stream(self.device)
            ready = None
            for batch in self.loader:
                with torch.cuda.stream(stream):
                    nxt = self._prepare(batch)
                if ready is not None:
                    yield ready
                torch.cuda.current_stream(self.device).wait_stream(stream)
                for t in nxt:
                    t.record_stream(torch.cuda.current_stream(self.device))
                ready = nxt
            if ready is not None:
                yield ready
        except ZooAdaptError as e:
            raise worker_error(e) from None


def eval_batches(
    dataset: ImageSource,
    norm: Normalization,
    device: torch.device,
    *,
    batch_size: int,
    workers: int,
    order: EpochOrder | None = None,
    channels_last: bool = False,
) -> LoaderBatches:
    """Evaluation views of `dataset` (an ImageDataset, or any dataset with
    `with_transform`) as batches on `device`: the image's exact eval crop
    (`EvalTransform`), decoded by loader workers, in file order unless `order` says
    otherwise. Validation, evaluate, predict's folders, the analysis and the ONNX check
    all read images through here."""
    order = order or EpochOrder(len(dataset), shuffle=False)
    return LoaderBatches(
        dataset.with_transform(EvalTransform(norm)),
        batch_size=batch_size,
        norm=norm,
        device=device,
        order=order,
        workers=workers,
        channels_last=channels_last,
    )


def cycle(batches: Batches, steps: int):
    """`steps` batches, starting the source over when it runs out (domain adaptation
    walks the shorter of two sources more than once per epoch)."""
    done = 0
    while done < steps:
        empty = True
        for batch in batches:
            empty = False
            yield batch
            done += 1
            if done == steps:
                return
        if empty:
            raise ZooAdaptError("a data source yielded no batch")
