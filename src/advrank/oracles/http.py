"""The HTTP oracle: any search endpoint with the schema of ``advrank serve`` (``POST
/search?k=K`` with a PNG body -> ``{"ids": [...], "scores": [...] or null}``, ``GET /info``;
see :mod:`advrank.oracles.wire`), or another API through a schema adapter
(:mod:`advrank.oracles.schemas`, e.g. a generic JSON search API).

Pictures travel as 8-bit PNGs, so the oracle is ``eight_bit``: attacks search the 8-bit grid.
A batch's requests go out concurrently from one asyncio client (at most ``concurrency`` in
flight, never more than the service's own limit), each through :mod:`advrank.oracles.transport`
(one total deadline, a size cap, ``Retry-After``, resends charged to the budget's ledger).
At full feedback, when the service offers ``rank_of`` (``named_ranks`` in its /info) and the
caller names the ids it reads, each request asks for their ranks alone (a few ints in place
of |X| ids).

Every answer is validated before use (:mod:`advrank.oracles.wire`): strict types (ids JSON
integers, scores finite numbers, every ``/info`` field of its type; an old service without
``api``/``id_bound`` is read by :func:`advrank.oracles.info.read_info`), then against its
request (at most k ids, each in ``[0, id_bound)``, unique; scores nearest first; ranks
coherent). An invalid answer is one :class:`AdvrankError` line naming the endpoint and the
field, and it is never scored. If a request fails for good, the rest of its batch is
cancelled.
"""

from __future__ import annotations

import asyncio
import io
import threading
from functools import partial
from typing import Any

import numpy as np
import torch

from advrank.core.checks import check_int
from advrank.core.target import SearchTarget
from advrank.errors import AdvrankError
from advrank.oracles.base import Answer, Feedback, Oracle, check_named, named_list
from advrank.oracles.info import read_info
from advrank.oracles.schemas import Schema, get_schema
from advrank.oracles.transport import Patience, Transport
from advrank.oracles.wire import InfoAnswer, RanksAnswer, check_ranks, check_search, parse
from advrank.registry import ORACLES

INFO_CAP = 1 << 20  # bytes of a /info answer
BASE_CAP = 256 << 10  # bytes of any search answer, plus PER_ID per id it may hold
PER_ID = 64
THUMB_CAP = 32 << 20  # bytes of one thumbnail


def _httpx():
    try:
        import httpx
    except ImportError:
        raise AdvrankError("the HTTP oracle needs httpx: pip install 'advrank[serve]'") \
            from None
    return httpx


def answer_cap(k: int, named: int = 0) -> int:
    """The most bytes an honest answer to a top-``k`` search (or the ranks of ``named``
    ids) takes: a fixed allowance and :data:`PER_ID` per id (an id, a score, separators)."""
    return BASE_CAP + PER_ID * (k + named)


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


def png_image(body: bytes | None, shape: list[int], where: str) -> torch.Tensor:
    """A thumbnail's bytes as ``[C, H, W]`` in [0, 1] at ``shape`` (C, H, W), one line when
    it is not such a picture."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(body or b"")).convert("L" if shape[0] == 1 else "RGB")
    except Exception:  # PIL raises many types for bytes it cannot read
        raise AdvrankError(f"{where} answered something that is not a picture") from None
    if list(img.size) != [shape[2], shape[1]]:
        raise AdvrankError(f"{where} is {img.size[0]} x {img.size[1]} pixels, not the "
                           f"model's {shape[2]} x {shape[1]}")
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).float() / 255
    return pixels[None] if shape[0] == 1 else pixels.permute(2, 0, 1)


@ORACLES.register("http", aliases=("https",), argument="//HOST:PORT")
class HttpOracle(Oracle):
    """The search at ``url`` (e.g. ``http://127.0.0.1:8000``); ``gallery_size``: the local
    gallery its ids must match (None: the service's own, read from /info by
    :meth:`check_service`); ``concurrency`` requests in flight; ``timeout`` seconds per
    request, all of it; ``max_wait``: the longest ``Retry-After`` honoured; ``pipeline``:
    the upload pipeline each picture goes through before it is sent (see :class:`Oracle`);
    ``schema``: how the API is asked and read (:mod:`advrank.oracles.schemas`; default
    ``advrank``). ``queries`` counts every search request sent, resends included."""

    name = "http"
    eight_bit = True
    remote = True

    def __init__(self, url: str, feedback: Feedback | str, gallery_size: int | None = None,
                 concurrency: int = 32, timeout: float = 60.0, max_wait: float = 10.0,
                 pipeline: str | None = None, schema: str | Schema | None = None):
        super().__init__(feedback, 1 if gallery_size is None else gallery_size, pipeline)
        _httpx()
        self.schema = get_schema(schema)
        self.url = url.rstrip("/")
        self.concurrency = check_int(concurrency, "oracle concurrency", low=1, high=1024)
        self.patience = Patience(deadline=timeout, max_wait=max_wait)
        self.in_flight = self.concurrency  # lowered to the service's limit by check_service
        self.local_size = gallery_size
        self.info: InfoAnswer | None = None
        self.id_bound = self.gallery_size  # the service's, once /info is read
        # one event loop in a thread of its own runs every request (see :meth:`_run`)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="http-oracle")
        self.thread.start()
        self.client = self._run(self._client())
        self.transport = Transport(self.client, self.url, self.patience)

    async def _client(self, transport: Any = None):
        httpx = _httpx()
        return httpx.AsyncClient(base_url=self.url, timeout=self.patience.deadline,
                                 follow_redirects=False, transport=transport,
                                 limits=httpx.Limits(max_connections=self.concurrency))

    def use_transport(self, transport: Any) -> None:
        """Send through ``transport`` (an ``httpx.AsyncBaseTransport``, e.g. a
        ``MockTransport`` in tests) in place of the network."""
        self._run(self.client.aclose())
        self.client = self._run(self._client(transport))
        self.transport = Transport(self.client, self.url, self.patience)

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
    def preflight(cls, argument: str, **options: Any) -> None:
        """The service answers its health path (``GET /health`` for ``advrank``; a schema
        without one is not checked) before the slow local gallery is embedded, within 10 s
        all told. ``options``: ``schema`` (a name or a :class:`Schema`)."""
        path = get_schema(options.get("schema")).health
        if path is None:
            return

        async def health() -> None:
            httpx = _httpx()
            async with httpx.AsyncClient(base_url=argument.rstrip("/"), timeout=10,
                                         follow_redirects=False) as client:
                await Transport(client, argument.rstrip("/"), Patience(10.0, 1.0, 3, 1)
                                ).fetch("GET", path, INFO_CAP)

        asyncio.run(health())

    @classmethod
    def from_spec(cls, argument: str, target: SearchTarget | None, feedback: Feedback,
                  **options: Any) -> HttpOracle:
        """The service at ``argument`` (a URL), checked against ``target`` (None: an endpoint
        with no local copy; its own gallery size): same gallery and input size, a ``max_k``
        deep enough for ``feedback``, scores when it needs them. ``options``: concurrency,
        timeout, max_wait, pipeline, schema."""
        keys = ("concurrency", "timeout", "max_wait", "pipeline", "schema")
        oracle = cls(argument, feedback, None if target is None else len(target.gallery),
                     **{k: options[k] for k in keys if options.get(k) is not None})
        try:
            oracle.check_service(target)
        except BaseException:
            oracle.close()
            raise
        return oracle

    def read_info(self) -> InfoAnswer:
        """``GET /info``, typed (:func:`advrank.oracles.info.read_info`); for a schema
        without one, what its description says (:meth:`Schema.info`)."""
        if not self.schema.has_info:
            return self.schema.info()
        body = self._run(self.transport.fetch("GET", "/info", INFO_CAP))
        return read_info(body, f"{self.url}/info")

    def check_service(self, target: SearchTarget | None = None) -> None:
        """Read ``/info`` and check that the service can serve this oracle (and ``target``,
        when given: the same gallery, ids and input size)."""
        info = self.info = self.read_info()
        limit = info.limits.max_concurrency if info.limits is not None else None
        if limit is not None and limit < self.concurrency:
            self.in_flight = limit  # no more in flight than it serves
        self.id_bound = info.id_bound
        if self.local_size is None:
            self.gallery_size = info.gallery_size
        elif info.gallery_size != self.local_size:
            raise AdvrankError(f"the service at {self.url} ranks {info.gallery_size} items, "
                               f"the local gallery has {self.local_size}: serve the same "
                               "checkpoint and data")
        elif info.id_bound != self.local_size:
            raise AdvrankError(f"the service at {self.url} answers ids up to "
                               f"{info.id_bound - 1} (items were inserted or deleted), the "
                               f"local gallery's run to {self.local_size - 1}")
        shape = list(target.meta.image_shape) if target is not None else []
        if shape and info.input_size and list(info.input_size) != shape:
            raise AdvrankError(f"the service takes pictures {info.input_size}, the local "
                               f"model {shape}")
        depth = self.feedback.depth(self.gallery_size)
        if info.max_k < depth:
            raise AdvrankError(f"{self.feedback.describe()} feedback needs {depth} results per "
                               f"search; the service gives at most {info.max_k} (start "
                               f"it with --max-k {depth})")
        if self.feedback.scores and not info.scores:
            raise AdvrankError(f"the service at {self.url} shows no scores (start it with "
                               "--scores) for topk-scores feedback")
        self.ranks_named = (self.feedback.level == "full" and info.named_ranks
                            and self.schema.ranks)

    async def _all(self, requests: list[dict[str, Any]], caps: list[int],
                   resend=None) -> list[bytes | None]:
        """The raw answers to every search request (a schema's :meth:`Schema.request`, each
        at most its cap of bytes; None: lost), at most ``in_flight`` at a time;
        ``resend(i)``: see :meth:`Oracle.answer`."""
        slots = asyncio.Semaphore(self.in_flight)

        def count() -> None:
            self.queries += 1

        async def one(i: int) -> bytes | None:
            request = dict(requests[i])
            method, path = request.pop("method"), request.pop("path")
            async with slots:
                return await self.transport.fetch(
                    method, path, caps[i], None if resend is None else partial(resend, i),
                    count, **request)

        tasks = [asyncio.ensure_future(one(i)) for i in range(len(requests))]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:  # one failed for good: the rest are not left running
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def _lists(self, raw: list[bytes | None], depth: int, scores: bool):
        """``(ids [N, depth], scores [N, depth] or None)`` of validated answers (a lost one:
        -1 ids, +inf scores)."""
        where = f"{self.url}/search"
        ids = torch.full((len(raw), depth), -1, dtype=torch.long)
        dist = torch.full((len(raw), depth), float("inf")) if scores else None
        for row, body in enumerate(raw):
            if body is None:
                continue
            out = check_search(self.schema.answer(body, where), depth, self.id_bound, scores,
                               where)
            ids[row, : len(out.ids)] = torch.tensor(out.ids, dtype=torch.long)
            if scores:
                dist[row, : len(out.ids)] = torch.tensor(out.scores, dtype=torch.float32)
        return ids, dist

    def _search(self, images: torch.Tensor, depth: int, scores: bool, resend=None):
        requests = [self.schema.request(body, depth) for body in png_bytes(images)]
        raw = self._run(self._all(requests, [answer_cap(depth)] * len(requests), resend))
        ids, dist = self._lists(raw, depth, scores)
        return ids, dist, torch.tensor([b is None for b in raw], dtype=torch.bool)

    def search(self, images, depth, scores):
        ids, dist, _ = self._search(images, depth, scores)
        return ids, dist

    def _ranks(self, images: torch.Tensor, named: torch.Tensor, resend=None,
               k: int | None = None):
        """``(ranks [N, j] (-1: beyond the top ``k`` (default |X|) or lost), lost [N])`` from
        ``rank_of``."""
        where, k = f"{self.url}/search?rank_of", k or self.gallery_size
        requests = [self.schema.ranks_request(body, k, row)
                    for body, row in zip(png_bytes(images), named.tolist(), strict=True)]
        raw = self._run(self._all(requests, [answer_cap(0, named.shape[1])] * len(requests),
                                  resend))
        out = torch.full(named.shape, -1, dtype=torch.long)
        for row, body in enumerate(raw):
            if body is not None:
                ranks = check_ranks(parse(RanksAnswer, body, where), named[row].tolist(), k,
                                    where).ranks
                out[row] = torch.tensor([-1 if r is None else r for r in ranks])
        return out, torch.tensor([b is None for b in raw], dtype=torch.bool)

    def _check_text(self) -> None:
        if self.info is None or not self.info.text:
            raise AdvrankError(f"the service at {self.url} takes no text queries (its /info "
                               "says text: false; serve a model with a text tower)")

    def _search_texts(self, texts: list[str], depth: int, scores: bool, resend=None):
        self._check_text()
        requests = [self.schema.text_request(text, depth) for text in texts]
        raw = self._run(self._all(requests, [answer_cap(depth)] * len(requests), resend))
        ids, dist = self._lists(raw, depth, scores)
        return ids, dist, torch.tensor([b is None for b in raw], dtype=torch.bool)

    def search_texts(self, texts, depth, scores):
        """Text queries as JSON bodies ``{"text": ...}`` (the service's /info must say
        ``text``), answered and validated as picture searches are."""
        ids, dist, _ = self._search_texts(texts, depth, scores)
        return ids, dist

    def exchange_texts(self, texts, depth, resend):
        ids, dist, lost = self._search_texts(texts, depth, self.feedback.scores, resend)
        return Answer(ids, dist, lost)

    def rank(self, images, named):
        """The ranks of ``named [N, j]`` from the service's ``rank_of`` (k = |X|)."""
        if not self.ranks_named:
            return super().rank(images, named)
        return self._ranks(images, named)[0]

    @property
    def named_depth(self) -> int | None:
        """The service's ``rank_of`` depth (its ``max_k``: the whole gallery when it serves
        that deep), None when it offers none."""
        if self.info is None or not (self.info.named_ranks and self.schema.ranks):
            return None
        return self.max_depth

    def ranks_of(self, images, named):
        depth = self.named_depth
        if depth is None:
            raise AdvrankError(f"the service at {self.url} offers no rank_of")
        named = check_named(named, images.shape[0], self.gallery_size)
        return self._ranks(self.upload(images), named, None, depth)[0]

    def pictures(self, ids):
        """The service's thumbnails (``GET /items/{id}/thumbnail``, where /info says
        ``items``) as ``[N, C, H, W]`` in [0, 1]; None where it shows none."""
        if self.info is None or not self.info.items or not self.info.input_size:
            return None
        paths = [f"/items/{int(i)}/thumbnail" for i in ids.tolist()]

        async def fetch_all():
            slots = asyncio.Semaphore(self.in_flight)

            async def one(path: str) -> bytes | None:
                async with slots:
                    return await self.transport.fetch("GET", path, THUMB_CAP)

            return await asyncio.gather(*(one(path) for path in paths))

        raw = self._run(fetch_all())
        return torch.stack([png_image(body, self.info.input_size, f"{self.url}{path}")
                            for body, path in zip(raw, paths, strict=True)])

    def exchange(self, images, depth, named, resend):
        if named is not None:
            ranks, lost = self._ranks(images, named, resend)
            ids = named_list(ranks, named, self.gallery_size)
            return Answer(ids.masked_fill(lost[:, None], -1), lost=lost)
        scores = self.feedback.scores
        ids, dist, lost = self._search(images, depth, scores, resend)
        return Answer(ids, dist, lost)

    @property
    def max_depth(self) -> int:
        return self.gallery_size if self.info is None else min(self.info.max_k,
                                                               self.gallery_size)

    def seen(self, images):
        """The 8-bit upload, then the pipeline the service declares in /info (``jpeg:75``)
        when advrank knows it (an unknown one cannot be simulated: left out, and calibration
        then shows the difference)."""
        out = super().seen(images)
        declared = None if self.info is None else self.info.pipeline
        if declared in (None, "none"):
            return out
        from advrank.core.pipeline import get_pipeline

        try:
            pipeline = get_pipeline(declared)
        except AdvrankError:
            return out
        return pipeline(out)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self._run(self.client.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    def describe(self) -> dict[str, Any]:
        keep = ("api", "model", "fingerprint", "gallery_size", "index", "max_k", "pipeline")
        info = {} if self.info is None else self.info.model_dump(include=set(keep))
        return {**super().describe(), "url": self.url, "concurrency": self.concurrency,
                "ranks_named": self.ranks_named, **self.schema.describe(),
                "service": {k: info.get(k) for k in keep}}
