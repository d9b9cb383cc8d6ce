"""`python -m zoo_adapt ...` is `zoo-adapt ...` (and what torchrun launches)."""

from zoo_adapt.cli import main

main()
