"""What can go wrong with one request, in the service's own words: the engine, the body
reader and the catalog raise these; one exception handler (in :mod:`advrank.serve.app`)
maps each kind to its HTTP status and a ``{"error": ...}`` body.

Each carries a one-line ``message`` for the client; :class:`Busy` also says when to retry.
None of them is ever logged with a traceback: they are answers, not failures of the service.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service answers with an error (``message``: one line for the client)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    """The request is malformed (a bad parameter, an unreadable picture)."""


class Unauthorized(ServiceError):
    """A write without the service's bearer token (or with a wrong one)."""


class NotFound(ServiceError):
    """An id the catalog does not hold (never held, or deleted)."""


class RequestTimeout(ServiceError):
    """The body did not arrive, or the answer was not ready, within ``--request-timeout``."""


class TooLarge(ServiceError):
    """A body or picture over the service's limits."""


class Unsupported(ServiceError):
    """A body that is not a picture format the service reads."""


class Unprocessable(ServiceError):
    """A picture the model cannot embed (non-finite values)."""


class Busy(ServiceError):
    """The search queue is full; ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class ClientGone(ServiceError):
    """The client hung up before its request was in (nobody reads the answer)."""
