"""The `zoo-adapt` command: click commands only, a thin layer over the library API."""

from zoo_adapt.cli.app import cli, main

__all__ = ["cli", "main"]
