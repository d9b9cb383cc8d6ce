"""The one exception type users see: the CLI prints its message as a single line and exits 1."""


class ZooAdaptError(Exception):
    """A problem with the user's input or environment (not a bug in zoo-adapt)."""
