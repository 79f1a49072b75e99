"""What a schema adapter is: the requests a search API takes and how its answers read as
advrank's :class:`~advrank.oracles.wire.SearchAnswer` (gallery ids nearest first, scores as
distances, smaller nearer), before the oracle checks them against the request
(:func:`~advrank.oracles.wire.check_search`)."""

from __future__ import annotations

from typing import Any, ClassVar

from advrank.errors import AdvrankError
from advrank.oracles.wire import InfoAnswer, SearchAnswer
from advrank.registry import SCHEMAS


class Schema:
    """One search API. ``has_info``: it describes itself at ``GET /info`` (advrank's
    :class:`InfoAnswer`), else :meth:`info` does; ``ranks``: it answers ``rank_of``;
    ``health``: a path that answers 200 when it is up (None: not checked)."""

    name: ClassVar[str] = ""
    has_info: ClassVar[bool] = False
    ranks: ClassVar[bool] = False
    health: str | None = None

    @classmethod
    def from_argument(cls, argument: str) -> Schema:
        """The adapter for ``--schema NAME:ARGUMENT`` (one line when the argument is bad)."""
        if argument:
            raise AdvrankError(f"schema {cls.name} takes no argument, got {argument!r}")
        return cls()

    def request(self, picture: bytes, k: int) -> dict[str, Any]:
        """The request of a top-``k`` search for ``picture`` (a PNG file): ``method``,
        ``path`` and httpx's ``params``/``headers``/``content``/``files``."""
        raise NotImplementedError

    def ranks_request(self, picture: bytes, k: int, named: list[int]) -> dict[str, Any]:
        """The request for the ranks of ``named`` ids in the top-``k`` list (``ranks``)."""
        raise AdvrankError(f"the {self.name} schema has no rank_of")

    def text_request(self, text: str, k: int) -> dict[str, Any]:
        """The request of a top-``k`` search for a text query (a search that embeds texts)."""
        raise AdvrankError(f"the {self.name} schema takes no text queries")

    def answer(self, body: bytes, where: str) -> SearchAnswer:
        """A search's answer ``body`` as advrank's ids and scores (one line when it does not
        read: never a traceback)."""
        raise NotImplementedError

    def info(self) -> InfoAnswer:
        """What the service is (gallery, depth, scores), for an API without ``/info``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"schema": self.name}


def get_schema(spec: str | Schema | None) -> Schema:
    """``NAME[:ARGUMENT]`` (None: ``advrank``) as its adapter; an adapter passes through."""
    if isinstance(spec, Schema):
        return spec
    if spec is None:
        spec = "advrank"
    if not isinstance(spec, str) or not spec.strip():
        raise AdvrankError(f"a schema is NAME[:ARGUMENT] such as advrank or json:api.json, "
                           f"got {spec!r}")
    name, _, argument = spec.strip().partition(":")
    return SCHEMAS.get(SCHEMAS.canonical(name)).from_argument(argument)
