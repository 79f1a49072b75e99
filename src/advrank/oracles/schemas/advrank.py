"""The ``advrank`` schema: the wire of ``advrank serve`` (:mod:`advrank.oracles.wire`), with
``GET /info``, ``GET /health`` and ``rank_of``."""

from __future__ import annotations

from typing import Any

from advrank.oracles.schemas.base import Schema
from advrank.oracles.wire import SearchAnswer, parse
from advrank.registry import SCHEMAS


@SCHEMAS.register("advrank", argument="")
class AdvrankSchema(Schema):
    """``POST /search?k=K`` with the PNG as the body (or JSON ``{"text": ...}``) ->
    :class:`SearchAnswer`."""

    name = "advrank"
    has_info = True
    ranks = True
    health = "/health"

    def request(self, picture: bytes, k: int) -> dict[str, Any]:
        return {"method": "POST", "path": "/search", "params": {"k": str(k)},
                "headers": {"content-type": "image/png"}, "content": picture}

    def text_request(self, text: str, k: int) -> dict[str, Any]:
        """``POST /search?k=K`` with JSON ``{"text": TEXT}`` (where ``/info.text``)."""
        return {"method": "POST", "path": "/search", "params": {"k": str(k)},
                "json": {"text": text}}

    def ranks_request(self, picture: bytes, k: int, named: list[int]) -> dict[str, Any]:
        out = self.request(picture, k)
        return {**out, "params": {**out["params"], "rank_of": ",".join(map(str, named))}}

    def answer(self, body: bytes, where: str) -> SearchAnswer:
        return parse(SearchAnswer, body, where)
