"""Oracles: what a deployed search answers for a picture (see :mod:`advrank.oracles.base`).

``local`` (model + gallery, exact or through a FAISS index) and ``http`` (any endpoint with
the schema of ``advrank serve``, or another API through a schema adapter of
:mod:`advrank.oracles.schemas`) are built in; another kind of oracle is one module that
registers an :class:`Oracle` subclass with a ``from_spec`` class method in
:data:`advrank.registry.ORACLES`. Before an endpoint is trusted it is calibrated
(:mod:`advrank.oracles.calibrate`).
"""

from __future__ import annotations

from typing import Any

from advrank.core.target import SearchTarget
from advrank.errors import AdvrankError
from advrank.oracles.base import (
    LEVELS,
    Answer,
    Feedback,
    Oracle,
    parse_feedback,
)
from advrank.registry import ORACLES


def split_oracle_spec(text: Any) -> tuple[str, str]:
    """``(name, argument)`` of an oracle spec: a URL names its scheme (``http://h:p`` ->
    ``("http", "http://h:p")``), else ``NAME[:ARGUMENT]`` (``local:hnsw``). The name is
    checked against the registry; the argument is the oracle's to check."""
    if not isinstance(text, str) or not text.strip():
        raise AdvrankError(f"an oracle is local, local:INDEX or a URL such as "
                           f"http://127.0.0.1:8000, got {text!r}")
    text = text.strip()
    if "://" in text:
        scheme = text.partition("://")[0].lower()
        if not text.partition("://")[2].strip("/"):
            raise AdvrankError(f"the oracle URL {text!r} names no host")
        name, argument = ORACLES.canonical(scheme), text
    else:
        name, _, argument = text.partition(":")
        name = ORACLES.canonical(name)
    ORACLES.get(name).check_argument(argument)
    return name, argument


def preflight(spec: str, **options: Any) -> None:
    """The oracle's cheap checks (a service that answers) before any slow work; ``options``:
    what the oracle's ``preflight`` takes (the HTTP oracle's ``schema``)."""
    name, argument = split_oracle_spec(spec)
    ORACLES.get(name).preflight(argument, **options)


def make_oracle(spec: str, target: SearchTarget, feedback: Feedback | str,
                **options: Any) -> Oracle:
    """The oracle of ``spec`` (see :func:`split_oracle_spec`) for ``target`` (its gallery is
    the one the attacks select from), at ``feedback``."""
    name, argument = split_oracle_spec(spec)
    return ORACLES.get(name).from_spec(argument, target, parse_feedback(feedback), **options)


__all__ = ["LEVELS", "Answer", "Feedback", "Oracle", "make_oracle", "parse_feedback",
           "preflight", "split_oracle_spec"]
