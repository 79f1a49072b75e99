"""The HTTP oracle against endpoints that misbehave, one fixture per class (issue 30): every
answer validated (wrong types, ids out of range, NaN scores, nulls in /info: one error line,
never scored), an old /info still read, one deadline per request (a trickling answer),
a size cap (a 100 MB answer), Retry-After in both RFC forms, 429 like 503, no redirects, and
resends after a dropped connection charged to the budget (refused past it: lost, not sent).
The endpoints are httpx mock transports or tiny servers on loopback (tests/oracles/conftest);
tests/oracles/test_http_service.py runs the real ``advrank serve``."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
import torch

httpx = pytest.importorskip("httpx")

from advrank.errors import AdvrankError  # noqa: E402
from advrank.oracles.http import BASE_CAP, HttpOracle  # noqa: E402
from advrank.oracles.transport import retry_after  # noqa: E402

INFO = {"api": 2, "gallery_size": 10, "id_bound": 10, "max_k": 10, "scores": True,
        "named_ranks": True, "input_size": [1, 4, 4]}
#: today's advrank serve /info (before api/id_bound): still accepted
LEGACY_INFO = {"model": "c2f1", "source": "/abs/path/ckpt.pt", "gallery_size": 10,
               "metric": "cosine", "input_size": [1, 4, 4], "index": {"index": "exact"},
               "scores": "distance, smaller is nearer", "named_ranks": True,
               "formats": ["png"], "max_k": 10, "geometry": {"resize": None},
               "limits": {"max_body_bytes": 100, "max_pixels": 100, "max_concurrency": 2,
                          "max_k": 10, "default_k": 5, "max_named": 10, "max_batch": 4,
                          "batch_wait": 0.002}}


def reply(body, status: int = 200, headers: dict | None = None) -> httpx.Response:
    text = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.Response(status, content=text, headers={"content-type": "application/json",
                                                         **(headers or {})})


def oracle_with(handler, feedback: str = "topk:3", info: dict | None = None,
                **options) -> HttpOracle:
    """An HttpOracle over a 10-item gallery whose requests go to ``handler(request)``; with
    ``info``, /info answers it and the oracle reads it (check_service)."""
    oracle = HttpOracle("http://127.0.0.1:1", feedback, 10, concurrency=4, **options)

    def route(request):
        if request.url.path == "/info" and info is not None:
            return reply(info)
        return handler(request)

    oracle.use_transport(httpx.MockTransport(route))
    if info is not None:
        try:
            oracle.check_service()
        except BaseException:
            oracle.close()
            raise
    return oracle


def searched(handler, feedback: str = "topk:3", n: int = 1, **options):
    """The answer to ``n`` pictures from ``handler``'s endpoint (the oracle then closed)."""
    oracle = oracle_with(handler, feedback, **options)
    try:
        return oracle.answer(torch.rand(n, 1, 4, 4)), oracle
    finally:
        oracle.close()


# ---------------------------------------------------------------- every answer validated


@pytest.mark.parametrize("body, words", [
    ({"ids": ["1", "2", "3"]}, "ids.0"),
    ({"ids": [1, 2, 3], "scores": ["0.1", "0.2", "0.3"]}, "scores.0"),
    ('{"ids": [1, 2, 3], "scores": [0.1, NaN, 0.3]}', "scores.1"),
    ({"ids": [1.5, 2, 3]}, "ids.0"),
    ({"ids": None}, "ids"),
    ({"ids": [1, 2, 3, 4]}, "4 ids to a top-3 search"),
    ({"ids": [1, 2, 10]}, "id 10, outside [0, 9]"),
    ({"ids": [1, 1, 2]}, "an id twice"),
    ({"ids": [1, 2, 3], "scores": [0.3, 0.2, 0.1]}, "nearest first"),
    ({"ids": [1, 2, 3], "scores": [0.1]}, "1 scores for 3 ids"),
    ("[1, 2, 3]", "the answer"),
    ("<html>busy</html>", "the answer"),
])
def test_an_invalid_search_answer_is_one_error_line_and_never_scored(body, words):
    with pytest.raises(AdvrankError) as err:
        searched(lambda request: reply(body), "topk-scores:3")
    message = str(err.value)
    assert words in message and "127.0.0.1:1/search" in message and "\n" not in message


def test_a_valid_answer_is_padded_and_scored_as_sent():
    answer, oracle = searched(lambda request: reply({"ids": [4, 2], "scores": [0.1, 0.5]}),
                              "topk-scores:3", n=2)
    assert answer.ids.tolist() == [[4, 2, -1]] * 2 and not answer.lost.any()
    assert answer.scores[0, :2].tolist() == pytest.approx([0.1, 0.5])
    assert answer.scores[0, 2] == float("inf") and oracle.queries == 2


@pytest.mark.parametrize("ranks, words", [
    (["0", 1], "ranks.0"), ([0, 10], "rank 10, outside"), ([3, 3], "contradict"),
    ([0], "1 ranks for 2")])
def test_invalid_named_ranks_are_refused(ranks, words):
    with pytest.raises(AdvrankError, match=words):
        oracle = oracle_with(lambda request: reply({"ranks": ranks}), "full", INFO)
        try:
            oracle.answer(torch.rand(1, 1, 4, 4), torch.tensor([[1, 2]]))
        finally:
            oracle.close()


@pytest.mark.parametrize("change, words", [
    ({"max_k": None}, "max_k"), ({"gallery_size": "10"}, "gallery_size"),
    ({"id_bound": None}, "id_bound"), ({"scores": "yes"}, "scores"),
    ({"limits": {"max_concurrency": "4"}}, "limits"), ({"input_size": [1, "4", 4]},
                                                       "input_size.1")])
def test_a_null_or_a_string_in_info_is_one_error_naming_the_field(change, words):
    with pytest.raises(AdvrankError) as err:
        oracle_with(lambda request: reply({}), info={**INFO, **change}).close()
    assert words in str(err.value) and "/info" in str(err.value)


def test_an_old_service_without_api_is_read_with_gallery_size_as_the_bound():
    oracle = oracle_with(lambda request: reply({"ids": [9, 0, 1]}), "topk-scores:3",
                         LEGACY_INFO)
    try:
        assert oracle.info.api == 1 and oracle.id_bound == 10 and oracle.info.scores
        assert oracle.in_flight == 2 and oracle.ranks_named is False
        assert "source" not in json.dumps(oracle.describe())  # no path is recorded
    finally:
        oracle.close()
    with pytest.raises(AdvrankError, match="gallery_size"):
        oracle_with(lambda request: reply({}), info={**LEGACY_INFO, "gallery_size": None})


def test_a_service_whose_ids_outrun_the_local_gallery_is_refused():
    with pytest.raises(AdvrankError, match="inserted or deleted"):
        oracle_with(lambda request: reply({}), info={**INFO, "id_bound": 12})


# ---------------------------------------------------------------- the transport


def test_a_trickling_answer_ends_at_the_deadline_in_one_error(net):
    """The endpoint sends its headers, then one byte every 0.2 s: each read succeeds, so only
    a deadline on the whole request ends it."""
    async def trickle(reader, writer):
        await net.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        while True:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.2)

    with net.tcp_server(trickle) as url:
        oracle = HttpOracle(url, "topk:3", 10, timeout=1.0)
        try:
            with pytest.raises(AdvrankError, match="within the 1 s deadline"):
                oracle.answer(torch.rand(1, 1, 4, 4))
        finally:
            oracle.close()
    assert oracle.queries == 1


@pytest.mark.parametrize("declared", [True, False])
def test_a_100_mb_answer_is_refused_at_the_cap(declared):
    made = []

    async def chunks():
        for _ in range(100):  # 100 x 1 MB, made only as far as they are read
            made.append(1)
            yield b" " * 2**20

    def handler(request):
        headers = {"content-length": str(100 * 2**20)} if declared else {}
        return httpx.Response(200, content=chunks(), headers=headers)

    with pytest.raises(AdvrankError, match="more than .* bytes"):
        searched(handler)
    assert len(made) <= 1 + BASE_CAP // 2**20  # stopped at the cap, not read to the end


def test_retry_after_reads_both_rfc_forms_with_a_cap():
    now = 1_700_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 3, UTC), usegmt=True)
    assert retry_after("2", 10.0) == 2.0 and retry_after(" 120 ", 10.0) == 10.0
    assert retry_after(date, 10.0, now) == pytest.approx(3.0)
    assert retry_after(date, 1.0, now) == 1.0 and retry_after(date, 10.0, now + 60) == 0.0
    for bad in (None, "", "soon", "-5", "1.5", "Wed, 99 Foo 2015 07:28:00 GMT", "\u0661"):
        assert retry_after(bad, 10.0) is None


@pytest.mark.parametrize("status", [503, 429])
@pytest.mark.parametrize("when", ["0", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_a_busy_answer_is_retried_after_its_retry_after(status, when):
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) < 3:
            return reply({"error": "busy"}, status, {"retry-after": when})
        return reply({"ids": [1, 2, 3]})

    answer, oracle = searched(handler)
    assert answer.ids.tolist() == [[1, 2, 3]] and oracle.queries == 3 == len(calls)


def test_a_service_that_stays_busy_is_one_error():
    oracle = oracle_with(lambda request: reply({"error": "busy"}, 503, {"retry-after": "0"}))
    oracle.patience = oracle.transport.patience = type(oracle.patience)(5.0, 0.0, 4, 1)
    try:
        with pytest.raises(AdvrankError, match=r"stayed busy \(503\) for 5 tries"):
            oracle.answer(torch.rand(1, 1, 4, 4))
    finally:
        oracle.close()


def test_a_redirect_is_not_followed():
    with pytest.raises(AdvrankError, match="redirect to http://elsewhere/search .*not "
                                           "followed"):
        searched(lambda request: reply("", 302, {"location": "http://elsewhere/search"}))


def test_an_error_status_is_one_line_with_the_service_s_reason():
    with pytest.raises(AdvrankError, match="answered 500 to POST /search: model\nfailed"
                       .replace("\n", " ")):
        searched(lambda request: reply({"error": "model\nfailed"}, 500))


# ---------------------------------------------------------------- resends and the budget


def test_a_dropped_connection_is_resent_and_each_send_counted():
    calls = []

    def handler(request):
        calls.append(request.url.path)
        if len(calls) <= 3:  # three drops, then an answer (the most a request may take)
            raise httpx.ReadError("connection dropped", request=request)
        return reply({"ids": [1, 2, 3]})

    charged = []
    oracle = oracle_with(handler)
    try:
        answer = oracle.answer(torch.rand(1, 1, 4, 4),
                               resend=lambda i: charged.append(i) or True)
    finally:
        oracle.close()
    assert answer.ids.tolist() == [[1, 2, 3]] and calls == ["/search"] * 4
    assert charged == [0, 0, 0] and oracle.queries == 4


def test_a_resend_the_budget_refuses_is_not_sent_and_the_request_is_lost():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        return reply({"ids": [1, 2, 3]})

    oracle = oracle_with(handler)
    try:
        answer = oracle.answer(torch.rand(2, 1, 4, 4), resend=lambda i: False)
    finally:
        oracle.close()
    assert sorted(answer.lost.tolist()) == [False, True] and len(calls) == 2
    assert answer.ids[answer.lost].tolist() == [[-1, -1, -1]] and oracle.queries == 2


def test_a_connection_never_made_is_retried_without_a_charge():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return reply({"ids": [1, 2, 3]})

    oracle = oracle_with(handler)
    try:
        answer = oracle.answer(torch.rand(1, 1, 4, 4), resend=lambda i: False)
    finally:
        oracle.close()
    assert not answer.lost.any() and oracle.queries == 1 and len(calls) == 2


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
    return sum(not t.done() for t in asyncio.all_tasks() if t is not asyncio.current_task())


def test_a_service_that_keeps_dropping_is_one_error_and_the_batch_stops():
    calls, pending = failing_search(httpx.RemoteProtocolError, 6,
                                    "cannot reach the search service at "
                                    "http://127.0.0.1:1: RemoteProtocolError")
    assert pending == 0  # the other five requests were cancelled, not left running
    assert len(calls) <= 6 * 4


def test_a_timeout_is_not_resent():
    calls, _ = failing_search(httpx.ReadTimeout, 1, "cannot reach .* ReadTimeout")
    assert calls == [1]


def test_with_a_pipeline_the_upload_is_the_pipeline_s_output():
    import io

    import numpy as np
    from PIL import Image

    from advrank.core.pipeline import get_pipeline

    x = torch.rand(2, 1, 4, 4)
    uploads = []

    def handler(request):
        pixels = np.asarray(Image.open(io.BytesIO(request.content)), dtype=np.float32)
        uploads.append(torch.from_numpy(pixels)[None] / 255)
        return reply({"ids": [1, 2, 3]})

    oracle = oracle_with(handler, pipeline="jpeg:75")
    try:
        oracle.answer(x)
    finally:
        oracle.close()
    want = get_pipeline("jpeg:75")(x)  # requests go out concurrently: match in any order
    assert len(uploads) == 2 and all(any(torch.allclose(u, w, atol=1e-6) for u in uploads)
                                     for w in want)
    assert not any(torch.allclose(u, x[0], atol=1e-6) for u in uploads)
