"""Data-parallel training on PyTorch's own engine: torch.distributed with DDP, launched
by torchrun (one process per GPU, one node or many). Without torchrun's environment
nothing here is used.

What each process does: it trains on its own shard of every epoch (`pipeline.EpochOrder`
with its rank); `DataParallel` wraps the network in DDP, which averages gradients, so all
processes keep identical weights; evaluation is sharded without padding and its counts
summed (`evaluation.Tally`); only rank 0 writes the run folder. Steps that can fail on
bad input run under `agree`, so a problem seen by any process becomes the same one-line
error on all of them instead of a hang.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from zoo_adapt.engine.callbacks import Callback
from zoo_adapt.engine.processes import Processes, launched, lost_how
from zoo_adapt.errors import ZooAdaptError

TIMEOUT = timedelta(minutes=10)  # a collective waiting this long means a process is gone


def start(device: torch.device) -> Processes:
    """Join the process group torchrun prepared: NCCL on CUDA, gloo on the CPU."""
    procs = launched()
    if not procs.active or dist.is_initialized():
        return procs
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": TIMEOUT}
    if device.type == "cuda":
        kwargs["device_id"] = device
    try:
        dist.init_process_group(**kwargs)
    except (RuntimeError, ValueError) as e:
        raise ZooAdaptError(f"cannot join the torchrun process group ({backend}): {str(e).splitlines()[0]}") from None
    return procs


def peer_lost(e: BaseException) -> bool:
    """Whether `e` is a collective failing because another process stopped."""
    return isinstance(e, (RuntimeError, dist.DistError)) and lost_how(str(e)) is not None


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(name: str, procs: Processes) -> str:
    """Each process on its own GPU: `cuda` means cuda:LOCAL_RANK under torchrun."""
    if procs.active and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{procs.local_rank}"
    if procs.active and name.startswith("cuda:"):
        raise ZooAdaptError(
            f"--device {name}: under torchrun each process takes cuda:LOCAL_RANK; give --device cuda (or auto)"
        )
    return name


def agree(procs: Processes, work: Callable[[], Any]) -> Any:
    """Run `work` on every process; if it fails on any, raise the first failure's message
    on all (rank order), so bad input gives one error, not a hang of the others."""
    if not procs.active:
        return work()
    result, error = None, None
    try:
        result = work()
    except ZooAdaptError as e:
        error = str(e)
    errors: list[str | None] = [None] * procs.world
    dist.all_gather_object(errors, error)
    failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
    if failed:
        rank, message = failed[0]
        raise AgreedError(message, seen_by=rank)
    return result


class AgreedError(ZooAdaptError):
    """A failure every process raises together; rank 0 reports it."""

    def __init__(self, message: str, seen_by: int):
        super().__init__(message)
        self.seen_by = seen_by


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def broadcast(value: Any, procs: Processes) -> Any:
    """Rank 0's `value` on every process (a picklable object)."""
    if not procs.active:
        return value
    chosen = [value]
    dist.broadcast_object_list(chosen, src=0)
    return chosen[0]


def gather_shards(local: torch.Tensor, total: int, procs: Processes) -> torch.Tensor:
    """The rows of a whole set from each process's unpadded shard of it (rank r holds
    rows r, r + world, ...): every process gets them all, in the set's order."""
    if not procs.active:
        return local
    longest = -(-total // procs.world)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(procs.world)]
    dist.all_gather(parts, padded)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for rank, part in enumerate(parts):
        count = len(range(rank, total, procs.world))
        out[rank :: procs.world] = part[:count]
    return out


class DataParallel(Callback):
    """Trains the network as DistributedDataParallel. DDP only synchronises the
    parameters that require gradients when it is built, so it is rebuilt whenever the
    freeze boundary moves (otherwise a newly unfrozen layer would train apart on each
    process). Evaluation uses the plain model: shards of different lengths must not meet
    DDP's per-forward collectives."""

    order = -20  # before Compile, which compiles the DDP-wrapped network

    def __init__(self, procs: Processes):
        self.procs = procs
        self._stage = None

    def setup(self, loop) -> None:
        loop.runtime.world = self.procs.world
        loop.runtime.all_reduce = all_reduce_sum
        loop.runtime.wrappers.append((self._wrap, True))

    def epoch_start(self, loop, epoch: int) -> None:
        if loop.plan[epoch] != self._stage:
            self._stage = loop.plan[epoch]
            loop.rewrap()

    def _wrap(self, network):
        device = next(network.parameters()).device
        ids = [device] if device.type == "cuda" else None
        return DDP(network, device_ids=ids)  # buffers (BatchNorm statistics) follow rank 0 each step


def sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """BatchNorm statistics over the whole global batch (CUDA only, as PyTorch's
    SyncBatchNorm). Parameters and buffers stay the same objects, so the optimizer, the
    layer groups and the export see no difference."""
    if device.type != "cuda":
        raise ZooAdaptError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm does not run on the CPU)")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def launch(nproc: int, argv: list[str]) -> int:
    """`zoo-adapt finetune --nproc-per-node N ...`: hand the same command to torchrun's
    own launcher on this machine (`torchrun --standalone --nproc-per-node N -m zoo_adapt
    ...`). The processes report their own errors; the launcher's report is kept quiet."""
    # torchrun's launcher, only for --nproc-per-node
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "zoo_adapt", *argv])
    quiet = logging.getLogger("torch.distributed.elastic")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        return next((c for c in codes if c in (130, 143)), codes[0] if codes else 1) or 1
    finally:
        quiet.setLevel(level)
    return 0
