"""The ASGI middleware around every request: its deadline, its access-log line and its
metrics, in one place (a plain ASGI middleware: no body buffering, no extra task).

* **Deadline.** The whole request, its body's arrival included, runs under
  ``request_timeout`` seconds; past it, a request not yet answered gets a 408 ``{"error":
  ...}`` (``Connection: close``: the rest of a trickled body is never read).
* **Access log.** One line per request (client, method, path, status, milliseconds) through
  the ``log`` callable (None: silent, ``--quiet``).
* **Metrics.** Requests by route and status, latency by route, rejections by reason, and
  clients that hung up (the app saw ``http.disconnect``), in :class:`ServiceMetrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

from advrank.serve.metrics import ServiceMetrics

#: the reason a refused request is counted under, by status
REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "bad_method",
           408: "timeout", 413: "too_large", 415: "unsupported", 422: "unprocessable",
           503: "queue_full"}


class Observe:
    """Wraps the app: deadline, access log, metrics (see the module docstring)."""

    def __init__(self, app, metrics: ServiceMetrics, log: Callable[[str], None] | None,
                 request_timeout: float):
        self.app, self.metrics, self.log = app, metrics, log
        self.timeout = request_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        seen = {"status": None, "gone": False}

        async def receiving():
            message = await receive()
            if message["type"] == "http.disconnect":
                seen["gone"] = True
            return message

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            await send(message)

        # the app runs as a task waited on with a deadline (asyncio.timeout is 3.11+): an
        # error of the app's own comes out of result(), the deadline is only "not done"
        task = asyncio.ensure_future(self.app(scope, receiving, sending))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout)
            if done:
                task.result()
            else:
                await _cancel(task)
                if seen["status"] is None:
                    await _late(sending, self.timeout)
        finally:
            if not task.done():  # this request was cancelled itself (the server stopping)
                await _cancel(task)
            self._record(scope, seen, time.perf_counter() - start)

    def _record(self, scope, seen: dict, seconds: float) -> None:
        status = seen["status"] or 499  # never answered: the client left first
        route = getattr(scope.get("route"), "path", None)
        # unrouted but answered: the docs pages (a fixed few); anything else is one label
        label = route or (scope["path"] if status < 400 else "other")
        m = self.metrics
        m.requests.labels(scope["method"], label, str(status)).inc()
        m.latency.labels(label).observe(seconds)
        if status in REASONS:
            m.rejections.labels(REASONS[status]).inc()
        if seen["gone"]:
            m.disconnects.inc()
        if self.log is not None:
            client = (scope.get("client") or ("-",))[0]
            self.log(f'{client} "{scope["method"]} {scope["path"]}" {status} '
                     f"{seconds * 1000:.1f} ms")


async def _late(send, timeout: float) -> None:
    """A 408 for a request whose body or answer did not come within ``timeout`` seconds."""
    body = json.dumps({"error": f"the request took longer than {timeout:g} s (the "
                                "service's --request-timeout); send it again"}).encode()
    await send({"type": "http.response.start", "status": 408,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _cancel(task: asyncio.Future) -> None:
    """Cancel ``task`` and wait until it has stopped (its cancellation swallowed)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
