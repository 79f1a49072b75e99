"""What the oracle tests share: tiny HTTP endpoints on loopback written at the socket level
(so that they can misbehave as a real peer would: trickle an answer, drop a connection after
the search), a counting proxy in front of a real ``advrank serve``, and that service."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable

import pytest

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
REASONS = {200: "OK", 302: "Found", 400: "Bad Request", 404: "Not Found", 429: "Too Many "
           "Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


@contextlib.contextmanager
def tcp_server(handle: Handler):
    """``http://127.0.0.1:PORT`` of an asyncio server calling ``handle(reader, writer)`` per
    connection, in a thread of its own; stopped (its connections cancelled) on exit."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    async def serve():
        box["server"] = await asyncio.start_server(handle, "127.0.0.1", 0)
        box["port"] = box["server"].sockets[0].getsockname()[1]
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True, name="test-endpoint")
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop)
    assert started.wait(10), "the test endpoint did not start"
    try:
        yield f"http://127.0.0.1:{box['port']}"
    finally:
        async def stop():
            box["server"].close()
            current = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not current:
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


async def read_request(reader: asyncio.StreamReader):
    """``(method, target, headers (lower-case names), body)`` of the next request on a
    connection, None when the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, target, headers, body


async def write_response(writer: asyncio.StreamWriter, status: int, body: bytes,
                         headers: dict[str, str] | None = None) -> None:
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
            f"Content-Length: {len(body)}", "Content-Type: application/json",
            *(f"{k}: {v}" for k, v in (headers or {}).items())]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


class ProxyStats:
    """What a :func:`counting_proxy` saw: ``searches`` forwarded to the service, and
    ``dropped`` (answered by the service, never passed on)."""

    def __init__(self):
        self.searches = 0
        self.dropped = 0


@contextlib.contextmanager
def counting_proxy(upstream: str, drop_every: int = 0, mutate=None, rewrite=None):
    """``(url, stats)``: a proxy in front of ``upstream`` that forwards every request, counts
    the POST /search ones, and, with ``drop_every`` = n, closes the client's connection
    without an answer after every n-th search *the service has answered* (the case where a
    resend makes the service search twice). ``mutate(path, body) -> body`` rewrites the
    service's answers (a service that answers garbage), ``rewrite(path) -> path`` the
    requests' paths before they are forwarded."""
    import httpx

    stats = ProxyStats()

    async def handle(reader, writer):
        async with httpx.AsyncClient(base_url=upstream, timeout=30) as client:
            while (request := await read_request(reader)) is not None:
                method, target, headers, body = request
                sent = target if rewrite is None else rewrite(target)
                r = await client.request(method, sent, content=body, headers={
                    "content-type": headers.get("content-type", "application/octet-stream")})
                search = target.startswith("/search")
                if search:
                    stats.searches += 1
                    if drop_every and stats.searches % drop_every == 0:
                        stats.dropped += 1
                        break  # the service searched; its answer never reaches the client
                out = r.content if mutate is None else mutate(target, r.content)
                extra = {k: r.headers[k] for k in ("retry-after",) if k in r.headers}
                await write_response(writer, r.status_code, out, extra)
        writer.close()

    with tcp_server(handle) as url:
        yield url, stats


@pytest.fixture(scope="session")
def net():
    """The loopback helpers above: ``tcp_server``, ``read_request``, ``write_response``,
    ``counting_proxy``."""
    from types import SimpleNamespace

    return SimpleNamespace(tcp_server=tcp_server, read_request=read_request,
                           write_response=write_response, counting_proxy=counting_proxy)
