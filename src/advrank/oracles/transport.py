"""How the HTTP oracle sends one request to a search endpoint and reads its answer, so that a
hostile or broken endpoint can neither hang the client nor crash it, and every send is
counted.

* One total deadline per send (``deadline`` seconds for connect + write + read together): an
  endpoint that trickles its answer one byte a second ends in one error line at the deadline
  (httpx's own timeouts apply per read, which such an endpoint never trips).
* The answer is read up to ``cap`` bytes (a declared ``Content-Length`` above it is refused
  before reading; a chunked one is cut at the cap): a 100 MB answer is one error, not 100 MB
  of memory.
* A busy endpoint (503, and 429 likewise) is asked again after its ``Retry-After`` in either
  RFC 9110 form (delta-seconds or an HTTP-date), capped at ``max_wait`` seconds; at most
  ``max_busy`` times.
* A request whose connection dropped before the answer (a keep-alive connection closed just
  as the request went out) is sent again on a new one, at most ``max_drops`` times. The
  endpoint may have searched it already, so every send counts (``count``) and every resend,
  of either kind, is first asked of the budget's ledger (``resend() -> bool``): refused, the
  request is not sent and comes back lost (None). A connection that was never made sent
  nothing: it is retried without a charge.
* Redirects are not followed (a search that moved is a configuration error, and following
  one would send the picture somewhere the user did not name).

Every failure is one :class:`AdvrankError` line naming the endpoint and the request.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from advrank.core.checks import check_int, check_number
from advrank.errors import AdvrankError

BUSY = (429, 503)


@dataclass(frozen=True)
class Patience:
    """How long and how often the client waits on an endpoint: ``deadline`` seconds per send
    (all of it), a ``Retry-After`` capped at ``max_wait`` seconds, ``max_busy`` busy answers
    and ``max_drops`` dropped connections per request."""

    deadline: float = 60.0
    max_wait: float = 10.0
    max_busy: int = 50
    max_drops: int = 3

    def __post_init__(self):
        check_number(self.deadline, "oracle timeout (seconds per request)", low=0.0,
                     low_open=True, high=3600.0)
        check_number(self.max_wait, "oracle max wait (seconds)", low=0.0, high=3600.0)
        check_int(self.max_busy, "busy answers per request", low=0, high=10_000)
        check_int(self.max_drops, "dropped connections per request", low=0, high=100)


def retry_after(value: str | None, cap: float, now: float | None = None) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait, in [0, ``cap``]: delta-seconds
    (``"120"``) or an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, a past date = 0);
    None when absent or unreadable (the caller then backs off on its own). ``now``: the
    current Unix time (tests)."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        seconds = float(int(text))
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # RFC 9110: an HTTP-date is always UTC ("GMT")
            when = when.replace(tzinfo=timezone.utc)
        reference = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
        seconds = (when - reference).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), cap)


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line (whitespace runs collapsed), at most ``limit`` characters."""
    return " ".join(str(text).split())[:limit]


class TooLarge(Exception):
    """An answer past the size cap (internal)."""


class Transport:
    """Requests to the endpoint at ``url`` through ``client`` (an ``httpx.AsyncClient``),
    with ``patience``. Runs on the caller's event loop."""

    def __init__(self, client: Any, url: str, patience: Patience):
        self.client, self.url, self.patience = client, url, patience

    async def fetch(self, method: str, path: str, cap: int,
                    resend: Callable[[], bool] | None = None,
                    count: Callable[[], None] | None = None, **kwargs: Any) -> bytes | None:
        """The body of the endpoint's 2xx answer to one request (``kwargs``: httpx's
        ``content``, ``params``, ``headers``), at most ``cap`` bytes; None when it was lost
        (a resend the ledger refused). ``count()`` is called once per send that may have
        reached the endpoint."""
        import httpx

        where = f"{method} {path}"
        paid, busy, drops = True, 0, 0
        while True:
            if not paid:
                if resend is not None and not resend():
                    return None
                paid = True
            try:
                status, headers, body = await self._once(method, path, cap, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                drops = self._dropped(drops, exc)  # nothing sent: no count, no charge
                await asyncio.sleep(0.05 * drops)
                continue
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                self._counted(count)
                paid, drops = False, self._dropped(drops, exc)
                await asyncio.sleep(0.05 * drops)
                continue
            except asyncio.TimeoutError:  # not the builtin one before Python 3.11
                self._counted(count)
                raise AdvrankError(f"the search service at {self.url} did not answer {where} "
                                   f"within the {self.patience.deadline:g} s deadline") from None
            except TooLarge:
                self._counted(count)
                raise AdvrankError(f"the search service at {self.url} answered {where} with "
                                   f"more than {cap} bytes (refused)") from None
            except httpx.HTTPError as exc:
                self._counted(count)
                raise AdvrankError(f"cannot reach the search service at {self.url}: "
                                   f"{type(exc).__name__}: {one_line(str(exc), 120)}") from None
            self._counted(count)
            if 200 <= status < 300:  # 201 Created: a catalog upload's answer
                return body
            if status not in BUSY:
                raise AdvrankError(self._refusal(status, headers, body, where))
            busy += 1
            if busy > self.patience.max_busy:
                raise AdvrankError(f"the search service at {self.url} stayed busy ({status}) "
                                   f"for {busy} tries of {where}")
            wait = retry_after(headers.get("retry-after"), self.patience.max_wait)
            await asyncio.sleep(min(0.05 * busy, self.patience.max_wait) if wait is None
                                else wait)
            paid = False

    def _dropped(self, drops: int, exc: Exception) -> int:
        """One more dropped (or refused) connection; past ``max_drops``, one error."""
        if drops >= self.patience.max_drops:
            raise AdvrankError(f"cannot reach the search service at {self.url}: "
                               f"{type(exc).__name__}: {one_line(str(exc), 120)}")
        return drops + 1

    @staticmethod
    def _counted(count: Callable[[], None] | None) -> None:
        if count is not None:
            count()

    async def _once(self, method: str, path: str, cap: int,
                    **kwargs: Any) -> tuple[int, Any, bytes]:
        """``(status, headers, body)`` of one send, all of it within the deadline
        (``asyncio.wait_for``: ``asyncio.timeout`` is Python 3.11+, and 3.10 is supported)."""
        return await asyncio.wait_for(self._stream(method, path, cap, **kwargs),
                                      self.patience.deadline)

    async def _stream(self, method: str, path: str, cap: int,
                      **kwargs: Any) -> tuple[int, Any, bytes]:
        async with self.client.stream(method, path, **kwargs) as r:
            declared = r.headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > cap:
                raise TooLarge
            chunks, size = [], 0
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise TooLarge
                chunks.append(chunk)
            return r.status_code, r.headers, b"".join(chunks)

    def _refusal(self, status: int, headers: Any, body: bytes, where: str) -> str:
        """The one-line error of a status other than 200 and busy."""
        if 300 <= status < 400:
            return (f"the search service at {self.url} answered {status} to {where}, a "
                    f"redirect to {one_line(headers.get('location', '?'), 120)} (redirects "
                    "are not followed: give the oracle the service's own URL)")
        why = body.decode("utf-8", "replace")
        try:
            import json

            error = json.loads(why).get("error")
            why = why if error is None else str(error)
        except (ValueError, AttributeError, RecursionError):
            pass
        return (f"the search service at {self.url} answered {status} to {where}: "
                f"{one_line(why)}")
