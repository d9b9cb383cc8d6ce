"""`python -m zoo_adapt ...` is `zoo-adapt ...` (and what torchrun launches)."""
from .cli import main

main()
