"""Subcommands registered by ``advrank.cli`` (filled in by the blackbox work)."""


def register(sub, common, emit) -> None:
    """Add this module's subcommands to the ``advrank`` parser."""
