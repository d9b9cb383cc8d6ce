"""This process's place among torchrun's data-parallel processes, read from the
environment torchrun sets (no torch here: the CLI asks before it imports anything
heavy)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from zoo_adapt.errors import ZooAdaptError


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Processes()
# what gloo and NCCL say when the process at the other end of a collective is gone
LOST_PEER = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "Connection refused",
    "NCCL communicator was aborted",
    "remote process exited",
)


def lost_how(message: str) -> str | None:
    """For a collective's error message that says another process is gone, the library's
    words for it, shortly ('gloo: Connection reset by peer'); else None."""
    sign = next((sign for sign in LOST_PEER if sign in message), None)
    return None if sign is None else f"{'NCCL' if 'NCCL' in message else 'gloo'}: {sign}"


def launched() -> Processes:
    """What torchrun's environment says (a single process without it)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ZooAdaptError("WORLD_SIZE, RANK and LOCAL_RANK must be numbers (as torchrun sets them)") from None
    return Processes(rank, world, local) if world > 1 else SINGLE


def without_option(argv: list[str], name: str) -> list[str]:
    """`argv` without `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out
