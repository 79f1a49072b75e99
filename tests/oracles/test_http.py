"""The HTTP oracle's transport: a connection the service drops is resent on a new one (a
bounded number of times), and a request that fails for good ends its batch with one error,
its siblings cancelled. The service is a mock transport here; tests/serve runs a real one."""

from __future__ import annotations

import json

import pytest
import torch

httpx = pytest.importorskip("httpx")

from advrank.errors import AdvrankError  # noqa: E402
from advrank.oracles.http import MAX_RESENDS, HttpOracle  # noqa: E402


def oracle_with(handler) -> HttpOracle:
    """An HttpOracle (top-3 ids) whose requests go to ``handler(request)``."""
    oracle = HttpOracle("http://127.0.0.1:1", "topk:3", 10, concurrency=4)

    async def client():
        return httpx.AsyncClient(base_url=oracle.url, transport=httpx.MockTransport(handler))

    oracle._run(oracle.client.aclose())
    oracle.client = oracle._run(client())
    return oracle


def answer(request) -> httpx.Response:
    return httpx.Response(200, content=json.dumps({"ids": [1, 2, 3], "scores": None}),
                          headers={"content-type": "application/json"})


def test_a_dropped_connection_is_resent():
    calls = []

    def handler(request):
        calls.append(request.url.path)
        if len(calls) <= MAX_RESENDS:  # every attempt but the last allowed one is dropped
            raise httpx.ReadError("connection dropped", request=request)
        return answer(request)

    oracle = oracle_with(handler)
    try:
        ids, scores = oracle.search(torch.rand(1, 1, 4, 4), 3, False)
    finally:
        oracle.close()
    assert ids.tolist() == [[1, 2, 3]] and scores is None
    assert calls == ["/search"] * (MAX_RESENDS + 1)


def failing_search(error, n: int, match: str) -> tuple[list, int]:
    """``(calls, tasks still running)`` after a search of ``n`` pictures on a service whose
    every request raises ``error``, checked to end in one :class:`AdvrankError` (``match``)."""
    calls = []

    def handler(request):
        calls.append(1)
        raise error(f"{error.__name__} from the mock service", request=request)

    oracle = oracle_with(handler)
    try:
        with pytest.raises(AdvrankError, match=match):
            oracle.search(torch.rand(n, 1, 4, 4), 3, False)
        pending = oracle._run(_pending())
    finally:
        oracle.close()
    return calls, pending


async def _pending() -> int:
    import asyncio

    return sum(not t.done() for t in asyncio.all_tasks() if t is not asyncio.current_task())


def test_a_service_that_keeps_dropping_is_one_error_and_the_batch_stops():
    calls, pending = failing_search(httpx.RemoteProtocolError, 6,
                                    "cannot reach the search service at "
                                    "http://127.0.0.1:1: RemoteProtocolError")
    assert pending == 0  # the other five requests were cancelled, not left running
    assert len(calls) <= 6 * (MAX_RESENDS + 1)


def test_a_timeout_is_not_resent():
    calls, _ = failing_search(httpx.ReadTimeout, 1, "ReadTimeout")
    assert calls == [1]
