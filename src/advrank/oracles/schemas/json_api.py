"""The ``json:FILE`` schema: a generic JSON search API (a vendor's visual search), described
by a small JSON file, its answer a list of results each with an item key and a score.

The file (unknown keys refused, so a typo is an error, not a default)::

    {"path": "/v1/search",                 # the search endpoint (required)
     "method": "POST",                     # POST (default) or PUT
     "body": "raw",                        # raw PNG | "multipart:FIELD" | "json-base64:FIELD"
     "k": "top_k",                         # the name of k (query string; in the JSON body
                                           #   for json-base64); null: k is not sent
     "params": {}, "headers": {},          # fixed extras (strings)
     "results": "data.matches",            # dotted path to the list ("": the body is it)
     "id": "sku",                          # dotted path to each result's item key
     "score": "similarity",                # dotted path to its score (null: no scores)
     "order": "similarity",                # higher nearer ("similarity") or "distance"
     "ids": "ids.json",                    # item key -> advrank id: an object, or a file
                                           #   (relative to this one) holding it; null:
                                           #   the keys are advrank's integer ids already
     "max_k": 100,                         # the most results one search returns
     "gallery_size": 719,                  # needed when "ids" is null
     "health": null}                       # a path answering 200 when up (null: none)

A result whose key the mapping does not name is one error line (the local gallery cannot
place it), as is a result without its key or with a score that is not a finite number.
Scores are turned into distances (a similarity ``s`` becomes ``-s``) so that nearest-first
is checked as for advrank's own answers.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from advrank.errors import AdvrankError
from advrank.oracles.info import read_json
from advrank.oracles.schemas.base import Schema
from advrank.oracles.wire import InfoAnswer, SearchAnswer
from advrank.registry import SCHEMAS


class ApiFile(BaseModel):
    """The description file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    path: str = Field(pattern=r"^/")
    method: Literal["POST", "PUT"] = "POST"
    body: str = Field(default="raw", pattern=r"^(raw|multipart:.+|json-base64:.+)$")
    k: str | None = None
    params: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    results: str = ""
    id: str
    score: str | None = None
    order: Literal["similarity", "distance"] = "distance"
    ids: dict[str, int] | str | None = None
    max_k: int = Field(ge=1)
    gallery_size: int | None = Field(default=None, ge=1)
    health: str | None = Field(default=None, pattern=r"^/")


def dig(data: Any, path: str) -> Any:
    """``data`` at a dotted ``path`` ("" = itself; a missing step gives None)."""
    for step in filter(None, path.split(".")):
        data = data.get(step) if isinstance(data, dict) else None
    return data


def _mapping(ids: dict[str, int] | str | None, base: Path) -> dict[str, int] | None:
    """The item key -> id mapping, read from its file when it names one; ids unique, >= 0."""
    if isinstance(ids, str):
        where = base / ids
        try:
            ids = read_json(where.read_bytes(), f"the id mapping {where}")
        except OSError as exc:
            raise AdvrankError(f"cannot read the id mapping {where}: {exc.strerror}") from None
        if not isinstance(ids, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in ids.values()):
            raise AdvrankError(f"the id mapping {where} must be an object of item keys to "
                               "integer ids")
    if ids is not None and (any(v < 0 for v in ids.values())
                            or len(set(ids.values())) != len(ids)):
        raise AdvrankError("the id mapping must give each item its own id >= 0")
    return ids


@SCHEMAS.register("json", argument="FILE")
class JsonApiSchema(Schema):
    """A JSON search API described by ``api`` (an :class:`ApiFile`); ``mapping``: item key ->
    advrank id (None: the keys are the ids)."""

    name = "json"

    def __init__(self, api: ApiFile, mapping: dict[str, int] | None, source: str = ""):
        if mapping is None and api.gallery_size is None:
            raise AdvrankError("a json schema without an id mapping must give gallery_size")
        self.api, self.mapping, self.source = api, mapping, source
        self.health = api.health

    @classmethod
    def from_argument(cls, argument: str) -> JsonApiSchema:
        if not argument:
            raise AdvrankError("the json schema takes its description file: --schema "
                               "json:api.json")
        path = Path(argument)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise AdvrankError(f"cannot read the schema file {path}: {exc.strerror}") from None
        try:
            api = ApiFile.model_validate_json(text)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err.get("loc", ())) or "the file"
            raise AdvrankError(f"the schema file {path}: {field}: "
                               f"{err.get('msg', 'invalid')}") from None
        return cls(api, _mapping(api.ids, path.parent), path.name)

    def request(self, picture: bytes, k: int) -> dict[str, Any]:
        api = self.api
        kind, _, field = api.body.partition(":")
        params = dict(api.params)
        out: dict[str, Any] = {"method": api.method, "path": api.path,
                               "headers": dict(api.headers)}
        if kind == "json-base64":
            doc: dict[str, Any] = {field: base64.b64encode(picture).decode("ascii")}
            if api.k is not None:
                doc[api.k] = k
            out["content"] = json.dumps(doc).encode()
            out["headers"].setdefault("content-type", "application/json")
        else:
            if api.k is not None:
                params[api.k] = str(k)
            if kind == "multipart":
                out["files"] = {field: ("query.png", picture, "image/png")}
            else:
                out["content"] = picture
                out["headers"].setdefault("content-type", "image/png")
        return {**out, "params": params}

    def _id(self, key: Any, where: str) -> int:
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise AdvrankError(f"{where} answered a result whose {self.api.id!r} is "
                               f"{type(key).__name__}, not an item key")
        if self.mapping is None:
            if not isinstance(key, int) or key < 0:
                raise AdvrankError(f"{where} answered item {key!r}, not an id >= 0")
            return key
        found = self.mapping.get(str(key))
        if found is None:
            raise AdvrankError(f"{where} answered item {str(key)[:80]!r}, which the id "
                               "mapping does not name")
        return found

    def _score(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise AdvrankError(f"{where} answered a score {str(value)[:40]!r} that is not a "
                               "finite number")
        return -float(value) if self.api.order == "similarity" else float(value)

    def answer(self, body: bytes, where: str) -> SearchAnswer:
        results = dig(read_json(body, where), self.api.results)
        if not isinstance(results, list):
            raise AdvrankError(f"{where} answered no list of results at "
                               f"{self.api.results or 'the top level'!r}")
        ids = [self._id(dig(r, self.api.id), where) for r in results]
        if self.api.score is None:
            return SearchAnswer(ids=ids)
        return SearchAnswer(ids=ids, scores=[self._score(dig(r, self.api.score), where)
                                             for r in results])

    def info(self) -> InfoAnswer:
        size = self.api.gallery_size or len(self.mapping)
        bound = max(size, max(self.mapping.values(), default=-1) + 1 if self.mapping else 0)
        return InfoAnswer(api=1, model=f"json:{self.source}", gallery_size=size,
                          id_bound=bound, max_k=self.api.max_k,
                          scores=self.api.score is not None)

    def describe(self) -> dict[str, Any]:
        return {"schema": f"json:{self.source}"}
