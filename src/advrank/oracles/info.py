"""Reading a search service's ``GET /info`` as a typed :class:`~advrank.oracles.wire.InfoAnswer`,
whatever version of the schema it speaks.

A service of schema 2 (``"api": 2``) is parsed as it is, strictly. A service older than the
versioned schema (advrank serve before ``api``/``id_bound``, which states neither) is still
accepted: it never inserted or deleted items, so its ids run over ``[0, gallery_size)`` and
``gallery_size`` is its id bound; its ``scores`` was a description (a string, or null when it
showed none) rather than a flag. Every other field is typed as in schema 2, so a ``null``
where a number belongs, or a number sent as a string, is one error line naming the field.
"""

from __future__ import annotations

import json
from typing import Any

from advrank.errors import AdvrankError
from advrank.oracles.wire import InfoAnswer, parse

#: the schema version given to a service that states none (before ``api`` existed)
LEGACY_API = 1


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_json(body: bytes | str, where: str) -> Any:
    """``body`` as JSON (NaN and Infinity refused: not JSON), or one :class:`AdvrankError`."""
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AdvrankError(f"{where} answered something that is not JSON") from None


def read_info(body: bytes | str, where: str) -> InfoAnswer:
    """A ``/info`` body as an :class:`InfoAnswer` (see the module docstring for a service
    that predates ``api``); one :class:`AdvrankError` line naming the bad field."""
    data = read_json(body, where)
    if not isinstance(data, dict):
        raise AdvrankError(f"{where} answered {type(data).__name__}, not an object: it does "
                           "not describe a search service")
    if "api" in data:
        return parse(InfoAnswer, body, where)
    if "gallery_size" not in data:
        raise AdvrankError(f"{where} does not describe a search service (no gallery_size)")
    legacy = dict(data, api=LEGACY_API, id_bound=data["gallery_size"])
    if legacy.get("scores") is None or isinstance(legacy.get("scores"), str):
        legacy["scores"] = legacy.get("scores") is not None  # "distance, ...": it shows them
    return parse(InfoAnswer, json.dumps(legacy), where)
