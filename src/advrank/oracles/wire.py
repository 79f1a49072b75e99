"""The wire schema of an advrank search service: what ``advrank serve`` answers and what the
HTTP oracle accepts, declared once (pydantic models) so that the two sides cannot drift.

The service uses these models as its typed responses (FastAPI's ``response_model``); the
client parses every answer with them in strict mode (:func:`parse`): ids must be JSON
integers (not strings, not floats, not booleans), scores finite JSON numbers, every field of
``/info`` of its declared type. What needs the context of the request (ids below the
service's ``id_bound``, unique, at most k of them; scores nearest first) is checked by
:func:`check_search` and :func:`check_ranks`. A bad answer is one :class:`AdvrankError` line
naming the endpoint and the field, and it is never scored.

Endpoints (see :mod:`advrank.serve.app`):

* ``POST /search?k=K`` (a picture body, or JSON ``{"text": ...}`` where ``/info`` says
  ``text``) -> :class:`SearchAnswer`; with ``&rank_of=I,J,...`` -> :class:`RanksAnswer`.
* ``GET /info`` -> :class:`InfoAnswer`; ``GET /health`` -> ``{"status": "ok"}``.
* ``GET /items/{id}`` -> :class:`ItemAnswer` (``/items/{id}/thumbnail``: a PNG), where
  ``/info`` says ``items``.
* ``POST /items`` (a picture body, ``Authorization: Bearer TOKEN``) -> :class:`InsertAnswer`
  and ``DELETE /items/{id}`` -> :class:`DeleteAnswer`, where ``/info`` says ``writable``.
* Every error: :class:`ErrorAnswer` with a 4xx/5xx status (503 and 429 with ``Retry-After``).
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from advrank.errors import AdvrankError

#: the version of this schema a service states in ``/info`` (``api``)
API_VERSION = 2


class _Answer(BaseModel):
    # strict: no "1" -> 1 or 1.0 -> 1 coercion; unknown fields are ignored (a newer service
    # may add some); NaN/Infinity (which Python's JSON reader accepts) are refused
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)


class SearchAnswer(_Answer):
    """The top-k list: ``ids`` (gallery ids, nearest first) and ``scores`` (the metric's
    distances, smaller is nearer, one per id) or None where the service shows ids only."""

    ids: list[int]
    scores: list[float] | None = None


class RanksAnswer(_Answer):
    """Where each id named in ``rank_of`` sits in the top-k list (0 = nearest; None beyond
    it), in the order named."""

    ranks: list[int | None]


class LimitsInfo(_Answer):
    """What one request may use, as the service enforces it (``max_k`` here is the same
    number as :attr:`InfoAnswer.max_k`: what a search may really ask for)."""

    max_body_bytes: int = Field(ge=1)
    max_pixels: int = Field(ge=1)
    max_concurrency: int = Field(ge=1)
    max_k: int = Field(ge=1)
    default_k: int = Field(ge=1)
    max_named: int = Field(ge=1)


class InfoAnswer(_Answer):
    """``GET /info``: what the service ranks and how. ``gallery_size``: the items it holds
    now; ``id_bound``: every id it answers lies in ``[0, id_bound)`` (ids are never reused,
    so after deletions ``id_bound`` may exceed ``gallery_size``); ``fingerprint``: the
    model's and collection's identity (a hash, never a path); ``pipeline``: what the service
    does to an upload before embedding it (e.g. ``jpeg:75``; None: decoding alone)."""

    api: int = Field(ge=1)
    model: str | None = None
    fingerprint: str | None = None
    dataset: str | None = None
    gallery_size: int = Field(ge=1)
    id_bound: int = Field(ge=1)
    metric: str | None = None
    input_size: list[int] | None = None
    index: dict[str, Any] | None = None
    max_k: int = Field(ge=1)
    scores: bool = False
    named_ranks: bool = False
    text: bool = False
    items: bool = False
    writable: bool = False
    pipeline: str | None = None
    formats: list[str] = Field(default_factory=list)
    limits: LimitsInfo | None = None


class ItemAnswer(_Answer):
    """``GET /items/{id}``: what an id is (the picture's base file name, its label)."""

    id: int = Field(ge=0)
    name: str | None = None
    label: int | None = None
    class_name: str | None = None


class InsertAnswer(_Answer):
    """``POST /items``: the new item's id."""

    id: int = Field(ge=0)


class DeleteAnswer(_Answer):
    """``DELETE /items/{id}``: the id removed."""

    deleted: int = Field(ge=0)


class ErrorAnswer(_Answer):
    """Every error's body."""

    error: str


A = TypeVar("A", bound=_Answer)


def parse(kind: type[A], body: bytes | str, where: str) -> A:
    """``body`` (a JSON text) as ``kind``, or one :class:`AdvrankError` naming ``where`` (the
    endpoint and path) and the first bad field."""
    try:
        return kind.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "the answer"
        raise AdvrankError(f"{where} answered an invalid {kind.__name__}: {field}: "
                           f"{err.get('msg', 'invalid')}") from None


def check_search(answer: SearchAnswer, k: int, id_bound: int, scores: bool,
                 where: str) -> SearchAnswer:
    """An answer to a top-``k`` search, checked against its request: at most k ids, each in
    ``[0, id_bound)`` and listed once; with ``scores``, one finite score per id, nearest
    (smallest) first."""
    ids = answer.ids
    if len(ids) > k:
        raise AdvrankError(f"{where} answered {len(ids)} ids to a top-{k} search")
    bad = next((i for i in ids if not 0 <= i < id_bound), None)
    if bad is not None:
        raise AdvrankError(f"{where} answered id {bad}, outside [0, {id_bound - 1}]")
    if len(set(ids)) != len(ids):
        raise AdvrankError(f"{where} answered an id twice in one list")
    if scores:
        s = answer.scores
        if s is None or len(s) != len(ids):
            raise AdvrankError(f"{where} answered {0 if s is None else len(s)} scores for "
                               f"{len(ids)} ids")
        if any(not math.isfinite(v) for v in s) or any(b < a for a, b in pairwise(s)):
            raise AdvrankError(f"{where} answered scores that are not finite distances, "
                               "nearest first")
    return answer


def check_ranks(answer: RanksAnswer, named: list[int], k: int, where: str) -> RanksAnswer:
    """An answer to ``rank_of`` for ``named`` ids in a top-``k`` list: one rank per named id,
    each in ``[0, k)`` or None, the same rank for the same id, distinct ids at distinct
    ranks."""
    ranks = answer.ranks
    if len(ranks) != len(named):
        raise AdvrankError(f"{where} answered {len(ranks)} ranks for {len(named)} named ids")
    seen: dict[int, int] = {}
    taken: dict[int, int] = {}
    for item, rank in zip(named, ranks, strict=True):
        if rank is None:
            continue
        if not 0 <= rank < k:
            raise AdvrankError(f"{where} answered rank {rank}, outside [0, {k - 1}]")
        if seen.setdefault(item, rank) != rank or taken.setdefault(rank, item) != item:
            raise AdvrankError(f"{where} answered ranks that contradict each other")
    return answer


def describe(info: InfoAnswer) -> dict[str, Any]:
    """What a result records about the service it reached (no paths: the service sends
    none)."""
    return info.model_dump(include={"api", "model", "fingerprint", "dataset", "gallery_size",
                                    "metric", "max_k", "pipeline"})
