"""The HTTP oracle: any search endpoint with the schema of ``advrank serve`` (``POST
/search?k=K`` with a PNG body -> ``{"ids": [...], "scores": [...] or null}``, ``GET /info``).

Pictures travel as 8-bit PNGs, so the oracle is ``eight_bit``: attacks search the 8-bit grid.
A batch's requests go out concurrently from one asyncio client (at most ``concurrency`` in
flight, never more than the service's own limit). A 503 (busy) is retried after its
``Retry-After``. A request whose connection the service dropped (a keep-alive connection
closed just as the request went out; it ended a 46-minute run once) is sent again on a new
one, a few times at most; if a request fails for good, the rest of its batch is cancelled.
At full feedback, when the service offers ``rank_of`` (``named_ranks`` in its /info) and
the caller names the ids it reads, each request asks for their ranks alone
(a few ints in place of |X| ids). Any other failure is one :class:`AdvrankError` line. An
adapter for another schema is one such file registering its own name in
:data:`advrank.registry.ORACLES`.
"""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

import numpy as np
import torch

from advrank.core.checks import check_int, check_number
from advrank.core.target import SearchTarget
from advrank.errors import AdvrankError
from advrank.oracles.base import Feedback, Oracle
from advrank.registry import ORACLES

MAX_RETRIES = 50  # 503s per request before giving up (the service keeps refusing)
MAX_RESENDS = 3  # dropped connections per request before giving up (the service is gone)


def _httpx():
    try:
        import httpx
    except ImportError:
        raise AdvrankError("the HTTP oracle needs httpx: pip install 'advrank[serve]'") \
            from None
    return httpx


def png_bytes(images: torch.Tensor) -> list[bytes]:
    """``images [N, C, H, W]`` in [0, 1] as PNG files (grey for C = 1, RGB for C = 3), each
    sample rounded to 8 bits."""
    from PIL import Image

    if images.shape[1] not in (1, 3):
        raise AdvrankError(f"PNG uploads hold 1 or 3 channels, got {images.shape[1]}")
    pixels = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    arrays = pixels.permute(0, 2, 3, 1).numpy()
    out = []
    for a in arrays:  # one encoder call per picture: PIL has no batch encoder
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(a[..., 0] if a.shape[-1] == 1 else a)).save(
            buf, "PNG", compress_level=1)
        out.append(buf.getvalue())
    return out


@ORACLES.register("http", aliases=("https",), argument="//HOST:PORT")
class HttpOracle(Oracle):
    """The search at ``url`` (e.g. ``http://127.0.0.1:8000``) over a ``gallery_size``-item
    gallery; ``concurrency`` requests in flight, ``timeout`` seconds per request."""

    name = "http"
    eight_bit = True

    def __init__(self, url: str, feedback: Feedback | str, gallery_size: int,
                 concurrency: int = 32, timeout: float = 60.0):
        super().__init__(feedback, gallery_size)
        _httpx()
        self.url = url.rstrip("/")
        self.concurrency = check_int(concurrency, "oracle concurrency", low=1, high=1024)
        self.timeout = check_number(timeout, "oracle timeout", low=0.0, low_open=True,
                                    high=3600.0)
        self.in_flight = self.concurrency  # lowered to the service's limit by check_service
        self.info: dict[str, Any] = {}
        # one event loop in a thread of its own runs every request (see :meth:`_run`)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="http-oracle")
        self.thread.start()
        self.client = self._run(self._client())

    async def _client(self):
        httpx = _httpx()
        return httpx.AsyncClient(base_url=self.url, timeout=self.timeout,
                                 limits=httpx.Limits(max_connections=self.concurrency))

    def _run(self, coro):
        """Run ``coro`` on the oracle's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    @classmethod
    def check_argument(cls, argument: str) -> None:
        httpx = _httpx()
        try:
            url = httpx.URL(argument)
        except Exception:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise AdvrankError(f"the oracle URL must look like http://HOST:PORT, got "
                               f"{argument!r}")

    @classmethod
    def preflight(cls, argument: str) -> None:
        """The service answers ``GET /health`` (before the slow local gallery is embedded)."""
        httpx = _httpx()
        try:
            r = httpx.get(argument.rstrip("/") + "/health", timeout=10)
        except httpx.HTTPError as exc:
            raise AdvrankError(f"cannot reach the search service at {argument}: "
                               f"{type(exc).__name__}: {str(exc)[:120]}") from None
        if r.status_code != 200:
            raise AdvrankError(f"the search service at {argument} answered {r.status_code} "
                               "to GET /health")

    @classmethod
    def from_spec(cls, argument: str, target: SearchTarget, feedback: Feedback,
                  **options: Any) -> HttpOracle:
        """The service at ``argument`` (a URL), checked against ``target``: same gallery size
        and input size, a ``max_k`` deep enough for ``feedback``, scores when it needs them."""
        oracle = cls(argument, feedback, len(target.gallery),
                     concurrency=options.get("concurrency", 32))
        try:
            oracle.check_service(target)
        except Exception:
            oracle.close()
            raise
        return oracle

    async def _send(self, method: str, path: str, **kwargs):
        """The response to one request, sent again (on a new connection) when the connection
        drops before an answer: a search has no side effects, so a resend is safe."""
        httpx = _httpx()
        dropped = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError,
                   httpx.ConnectError)
        for attempt in range(MAX_RESENDS + 1):
            try:
                return await self.client.request(method, path, **kwargs)
            except dropped as exc:
                if attempt == MAX_RESENDS:
                    why = exc
                else:
                    await asyncio.sleep(0.05 * (attempt + 1))
            except httpx.HTTPError as exc:
                why = exc
                break
        raise AdvrankError(f"cannot reach the search service at {self.url}: "
                           f"{type(why).__name__}: {str(why)[:120]}")

    async def _request(self, method: str, path: str, **kwargs):
        for _ in range(MAX_RETRIES):
            r = await self._send(method, path, **kwargs)
            if r.status_code != 503:
                break
            await asyncio.sleep(min(1.0, float(r.headers.get("retry-after", "0.05") or 0.05))
                                / 10)
        if r.status_code != 200:
            try:
                why = str(r.json().get("error"))[:200]
            except Exception:
                why = r.text[:200]
            raise AdvrankError(f"the search service at {self.url} answered {r.status_code} "
                               f"to {method} {path}: {why}")
        try:
            return r.json()
        except ValueError:
            raise AdvrankError(f"the search service at {self.url} answered {path} with "
                               "something that is not JSON") from None

    def check_service(self, target: SearchTarget) -> None:
        info = self._run(self._request("GET", "/info"))
        if not isinstance(info, dict) or "gallery_size" not in info:
            raise AdvrankError(f"{self.url}/info does not describe a search service")
        self.info = info
        limit = (info.get("limits") or {}).get("max_concurrency")
        if isinstance(limit, int) and 1 <= limit < self.concurrency:
            self.in_flight = limit  # no more in flight than it serves
        if info["gallery_size"] != len(target.gallery):
            raise AdvrankError(f"the service at {self.url} ranks {info['gallery_size']} items, "
                               f"the local gallery has {len(target.gallery)}: serve the same "
                               "checkpoint and data")
        shape = list(target.meta.image_shape)
        if shape and info.get("input_size") and list(info["input_size"]) != shape:
            raise AdvrankError(f"the service takes pictures {info['input_size']}, the local "
                               f"model {shape}")
        depth = self.feedback.depth(self.gallery_size)
        if int(info.get("max_k", 0)) < depth:
            raise AdvrankError(f"{self.feedback.describe()} feedback needs {depth} results per "
                               f"search; the service gives at most {info.get('max_k')} (start "
                               f"it with --max-k {depth})")
        if self.feedback.scores and not info.get("scores"):
            raise AdvrankError(f"the service at {self.url} shows no scores (start it with "
                               "--scores) for topk-scores feedback")
        self.ranks_named = self.feedback.level == "full" and info.get("named_ranks") is True

    async def _all(self, bodies: list[bytes], params: list[dict[str, str]]) -> list[dict]:
        """The JSON answers to POST /search of every body (with its params), at most
        ``in_flight`` at a time."""
        slots = asyncio.Semaphore(self.in_flight)

        async def one(body: bytes, query: dict[str, str]) -> dict:
            async with slots:
                out = await self._request("POST", "/search", content=body, params=query,
                                          headers={"content-type": "image/png"})
            if not isinstance(out, dict):
                raise AdvrankError(f"the search service at {self.url} answered with "
                                   f"{type(out).__name__}, not an object")
            return out

        tasks = [asyncio.ensure_future(one(b, q))
                 for b, q in zip(bodies, params, strict=True)]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:  # one failed for good: the rest are not left running
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def search(self, images, depth, scores):
        answers = self._run(self._all(png_bytes(images), [{"k": str(depth)}] * len(images)))
        ids = torch.full((len(answers), depth), -1, dtype=torch.long)
        dist = torch.full((len(answers), depth), float("inf")) if scores else None
        for row, out in enumerate(answers):  # JSON lists -> padded rows
            i, s = out.get("ids"), out.get("scores")
            if not isinstance(i, list):
                raise AdvrankError(f"the search service at {self.url} answered without ids")
            i = i[:depth]
            ids[row, : len(i)] = torch.tensor(i, dtype=torch.long)
            if scores:
                if not isinstance(s, list) or len(s) < len(i):
                    raise AdvrankError(f"the search service at {self.url} gave no scores")
                dist[row, : len(i)] = torch.tensor(s[: len(i)], dtype=torch.float32)
        return ids, dist

    def rank(self, images, named):
        """The ranks of ``named [N, j]`` from the service's ``rank_of`` (k = |X|)."""
        if not self.ranks_named:
            return super().rank(images, named)
        params = [{"k": str(self.gallery_size), "rank_of": ",".join(map(str, row))}
                  for row in named.tolist()]
        answers = self._run(self._all(png_bytes(images), params))
        ranks = [out.get("ranks") for out in answers]
        if not all(isinstance(r, list) and len(r) == named.shape[1] for r in ranks):
            raise AdvrankError(f"the search service at {self.url} answered rank_of without "
                               f"{named.shape[1]} ranks")
        out = torch.tensor([[-1 if r is None else r for r in row] for row in ranks],
                           dtype=torch.long).reshape(named.shape)
        if ((out < -1) | (out >= self.gallery_size)).any():
            raise AdvrankError(f"the search service at {self.url} gave ranks outside "
                               f"[0, {self.gallery_size - 1}]")
        return out

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self._run(self.client.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    def describe(self) -> dict[str, Any]:
        keep = ("model", "fingerprint", "gallery_size", "index", "max_k")
        return {**super().describe(), "url": self.url, "concurrency": self.concurrency,
                "ranks_named": self.ranks_named,
                "service": {k: self.info.get(k) for k in keep}}
