"""Attack, grid, defense-curve, transfer and universal subcommands (registered by ``cli``)."""


def register(sub, common, emit) -> None:
    pass
