"""The one exception type that the CLI turns into a readable message and a non-zero exit."""


class AdvrankError(Exception):
    """A user-facing error: bad input, missing files, unreadable checkpoints."""
