"""The one exception type that the CLI turns into a readable message and a non-zero exit."""


class AdvrankError(Exception):
    """A user-facing error: bad input, missing files, unreadable checkpoints.

    Its message is always one line: line breaks that come in with user input (a path, a
    name) are shown escaped, so the CLI prints exactly one ``advrank: error: ...`` line.
    """

    def __str__(self) -> str:
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")
