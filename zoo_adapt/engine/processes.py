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
