"""The HTTP search service: an ASGI app (FastAPI) over a :class:`~advrank.experiments.target.
Target` (model + gallery) and a :class:`~advrank.core.index.VectorIndex` over its embeddings.

Endpoints (every body is JSON):

* ``POST /search?k=K``: a picture (PNG or JPEG) as the raw body with an ``image/*`` content
  type, or as the field ``file`` of a ``multipart/form-data`` body -> ``{"ids": [...],
  "scores": [...]}``, the top K gallery members (gallery indices, nearest first). ``scores``
  are the metric's distances (smaller = nearer) when the service was started with scores,
  else ``null``: the realistic service shows ids only.
* ``POST /search?k=K&rank_of=I,J,...``: the same search, answered with ``{"ranks": [...]}``:
  where each named gallery id sits in that top-K list (0 = nearest; ``null`` beyond it), a
  few ints in place of K ids (with K = |X|: "the rank of a named item", full feedback).
* ``GET /health`` -> ``{"status": "ok"}``; ``GET /info`` -> model, gallery size, index,
  input size, metric, the feedback it gives and its limits.

Concurrent searches are micro-batched (:class:`Batcher`): the uploads that arrive while a
batch runs (at most ``max_batch``, waiting at most ``batch_wait`` seconds for more) go through
one forward and one index search per distinct K, so throughput grows with concurrent clients.

Limits (:class:`Limits`): body bytes (checked from Content-Length and while reading), pixels
(from the picture's header, before decoding), requests in flight (beyond it: 503 at once, with
``Retry-After``), the range of k, the number of named ids. Every bad request gets one 4xx
``{"error": "..."}``; an unexpected failure is a 500 with the same shape, and the service keeps
answering.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time

import asyncio
import threading
from dataclasses import asdict, dataclass
from typing import Any

import torch

from advrank.core.checks import check_int, check_number
from advrank.core.index import VectorIndex
from advrank.core.target import SearchTarget
from advrank.data.geometry import Geometry
from advrank.errors import AdvrankError
from advrank.serve.decode import FORMATS, UploadError, decode_upload

MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class Limits:
    """What one request may use: ``max_body_bytes`` of upload, ``max_pixels`` of picture,
    ``max_concurrency`` requests in flight at once, ``max_k`` results (at most |X|);
    ``default_k`` when the query names none; ``max_named`` ids in one ``rank_of``. How
    searches are batched: ``max_batch`` rows per forward (at most that many pictures, the
    rest zeros, so that an answer never depends on its batch), a batch waiting at most
    ``batch_wait`` seconds for more once its first picture is in."""

    max_body_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_concurrency: int = 4
    max_k: int = 100
    default_k: int = 10
    max_named: int = 1024
    max_batch: int = 32
    batch_wait: float = 0.002

    def __post_init__(self):
        check_int(self.max_body_bytes, "max body bytes", low=1, high=2**40)
        check_int(self.max_pixels, "max pixels", low=1, high=2**40)
        check_int(self.max_concurrency, "max concurrency", low=1, high=100_000)
        check_int(self.max_k, "max k", low=1)
        check_int(self.default_k, "default k", low=1, high=self.max_k)
        check_int(self.max_named, "max named ids", low=1, high=100_000)
        check_int(self.max_batch, "max batch", low=1, high=4096)
        check_number(self.batch_wait, "batch wait (s)", low=0.0, high=10.0)


def target_geometry(target: SearchTarget) -> Geometry:
    """How the target reads pictures: a collection's recorded geometry, else the whole
    picture squeezed to the checkpoint's input size (as :func:`load_target` reads folders)."""
    g = target.info.get("geometry")
    if g is not None:
        return Geometry(tuple(g["input_size"]), g["crop_pct"], g["interpolation"])
    return Geometry(target.meta.image_shape, None, "bilinear")


@dataclass
class Query:
    """One decoded search: ``image [C, H, W]``, its ``k`` and the ``named [j]`` gallery ids
    whose ranks it asks for (None: the top-k ids)."""

    image: torch.Tensor
    k: int
    named: torch.Tensor | None = None


class SearchService:
    """Upload bytes -> model input -> embedding -> index search, for a batch of queries at a
    time (one forward of ``max_batch`` rows and one index search per distinct k) under a
    lock: the model is not re-entrant under every backend."""

    def __init__(self, target: SearchTarget, index: VectorIndex, scores: bool, limits: Limits):
        if index.size != len(target.gallery):
            raise AdvrankError(f"the index holds {index.size} vectors, the gallery "
                               f"{len(target.gallery)}")
        self.target, self.index, self.scores, self.limits = target, index, scores, limits
        self.geometry = target_geometry(target)
        self.max_k = min(limits.max_k, index.size)
        self.lock = threading.Lock()

    def parse_k(self, text: str | None) -> int:
        if text is None:
            return min(self.limits.default_k, self.max_k)
        try:
            k = int(text)
        except ValueError:
            raise UploadError(400, f"k must be an integer, got {text[:40]!r}") from None
        if not 1 <= k <= self.max_k:
            raise UploadError(400, f"k must lie in [1, {self.max_k}], got {k}")
        return k

    def parse_named(self, text: str | None) -> torch.Tensor | None:
        """``rank_of=I,J,...`` as ``[j]`` gallery ids (None when absent)."""
        if text is None:
            return None
        parts = text.split(",")
        if len(parts) > self.limits.max_named:
            raise UploadError(400, f"rank_of names {len(parts)} ids; the limit is "
                                   f"{self.limits.max_named}")
        try:
            named = torch.tensor([int(p) for p in parts], dtype=torch.long)
        except ValueError:
            raise UploadError(400, f"rank_of must be gallery ids separated by commas, got "
                                   f"{text[:40]!r}") from None
        if ((named < 0) | (named >= self.index.size)).any():
            raise UploadError(400, f"rank_of ids must lie in [0, {self.index.size - 1}]")
        return named

    def decode(self, data: bytes, k: int, named: torch.Tensor | None) -> Query:
        return Query(decode_upload(data, self.geometry, self.limits.max_pixels), k, named)

    @torch.no_grad()
    def search_batch(self, queries: list[Query]) -> list[dict[str, Any] | UploadError]:
        """Each query's answer (``{"ids", "scores"}`` or ``{"ranks"}``), or the
        :class:`UploadError` of a picture the model embeds to non-finite values."""
        n = len(queries)
        if not 1 <= n <= self.limits.max_batch:
            raise AdvrankError(f"a batch holds 1 to {self.limits.max_batch} searches, got {n}")
        images = torch.stack([q.image for q in queries])
        # always max_batch rows (zeros pad): a row's floats then never depend on how many
        # pictures, or which, share its batch (kernels pick their paths by shape)
        images = torch.cat([images, images.new_zeros(self.limits.max_batch - n,
                                                     *images.shape[1:])])
        out: list[Any] = [UploadError(422, "the model gives a non-finite embedding for this "
                                           "picture")] * n
        with self.lock:
            emb = self.target.model(images.to(self.target.device)).float()
            finite = torch.isfinite(emb[:n]).all(1).cpu()
            for k in sorted({q.k for q in queries}):
                rows = [i for i, q in enumerate(queries) if q.k == k and finite[i]]
                if rows:
                    ids, scores = self.index.search(emb, k)  # all rows: the same shapes
                    for r in rows:
                        out[r] = self.answer(ids[r], scores[r], queries[r].named)
        return out

    def answer(self, ids: torch.Tensor, scores: torch.Tensor,
               named: torch.Tensor | None) -> dict[str, Any]:
        """One answer from a list ``ids [k]`` (``scores [k]``): its ids (and scores), or the
        positions of ``named [j]`` in it (None beyond it)."""
        keep = ids >= 0  # an approximate index may find fewer than k
        ids, scores = ids[keep], scores[keep]
        if named is not None:
            hit = ids[None, :] == named[:, None]  # [j, k]
            pos = torch.where(hit.any(1), hit.float().argmax(1), -1).tolist()
            return {"ranks": [p if p >= 0 else None for p in pos]}
        return {"ids": ids.tolist(),
                "scores": scores[torch.isfinite(scores)].tolist() if self.scores else None}

    def info(self) -> dict[str, Any]:
        t = self.target
        return {"model": t.meta.arch, "source": t.source, "fingerprint": t.fingerprint,
                "dataset": t.meta.dataset, "gallery_size": len(t.gallery),
                "metric": t.meta.metric, "input_size": list(self.geometry.input_size),
                "geometry": self.geometry.describe(), "index": self.index.info,
                "feedback": f"top-k ids{' and scores' if self.scores else ''}",
                "scores": "distance, smaller is nearer" if self.scores else None,
                "named_ranks": True, "formats": list(FORMATS), "max_k": self.max_k,
                "limits": asdict(self.limits)}


class Batcher:
    """Micro-batches the searches of concurrent requests: :meth:`submit` queues one decoded
    :class:`Query`; one worker task takes what is queued (up to ``max_batch``, waiting at
    most ``batch_wait`` s for more), runs :meth:`SearchService.search_batch` in a thread and
    hands each request its answer. Lives on the event loop of the first request."""

    def __init__(self, service: SearchService):
        self.service = service
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None

    async def submit(self, query: Query) -> dict[str, Any]:
        if self.worker is None or self.worker.done():
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self.run())
        done = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((query, done))
        return await done

    async def gather(self) -> list[tuple[Query, asyncio.Future]]:
        """The next batch: the first queued search, then what arrives within the wait."""
        limits, loop = self.service.limits, asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + limits.batch_wait
        while len(batch) < limits.max_batch:
            if self.queue.empty():
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:  # not the builtin one before 3.11
                    break
            else:
                batch.append(self.queue.get_nowait())
        return batch

    async def run(self) -> None:
        from starlette.concurrency import run_in_threadpool

        while True:
            batch = await self.gather()
            try:
                answers = await run_in_threadpool(self.service.search_batch,
                                                  [q for q, _ in batch])
            except Exception as exc:  # every waiting request gets it (a 500), the loop goes on
                answers = [exc] * len(batch)  # type: ignore[list-item]
            for (_, done), answer in zip(batch, answers, strict=True):
                if done.done():  # the client went away
                    continue
                if isinstance(answer, Exception):
                    done.set_exception(answer)
                else:
                    done.set_result(answer)


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise UploadError(413, f"the body is {int(length)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def upload_bytes(request, limit: int) -> bytes:
    """The picture's bytes: the raw body (``image/*``) or the multipart field ``file``."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (ctype.startswith("image/") or ctype == MULTIPART):
        raise UploadError(415, f"content type {ctype or '(none)'!r} is not a picture; send "
                               "image/png or image/jpeg, or multipart/form-data with a field "
                               "'file'")
    body = await read_body(request, limit)
    if ctype != MULTIPART:
        return body
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1,
                                     max_fields=10).parse()
    except MultiPartException as exc:
        raise UploadError(400, f"bad multipart body: {exc.message}") from None
    file = form.get("file")
    if file is None or isinstance(file, str):
        raise UploadError(400, "the multipart body needs a file field named 'file'")
    return await file.read()


def _error(status: int, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _install_errors(app) -> None:
    """Every error the framework raises (unknown path, wrong method, bad form) as one JSON
    ``{"error": ...}``; an unexpected exception as a 500 of the same shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return _error(400, "bad request: " + "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.exception_handler(Exception)
    async def internal_error(request, exc):
        return _error(500, f"internal error ({type(exc).__name__}); the service keeps running")


def _fastapi():
    try:
        import fastapi
    except ImportError:
        raise AdvrankError("the search service needs FastAPI: pip install 'advrank[serve]'") \
            from None
    return fastapi


def create_app(target: SearchTarget, index: VectorIndex, scores: bool = False,
               limits: Limits | None = None):
    """The FastAPI app serving ``target``'s gallery through ``index`` (see the module
    docstring for the endpoints); ``scores``: include distances in search answers."""
    fastapi = _fastapi()
    from starlette.concurrency import run_in_threadpool

    service = SearchService(target, index, bool(scores), limits or Limits())
    batcher = Batcher(service)
    app = fastapi.FastAPI(title="advrank search", docs_url=None, redoc_url=None,
                          openapi_url=None)
    app.state.service = service
    _install_errors(app)
    in_flight = [0]  # requests being served; the event loop is one thread, no lock needed

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return service.info()

    @app.post("/search")
    async def search(request: fastapi.Request):  # type: ignore[name-defined]
        if in_flight[0] >= service.limits.max_concurrency:
            return _error(503, f"busy: {in_flight[0]} searches in flight (the limit); retry "
                               "later", {"Retry-After": "1"})
        in_flight[0] += 1
        try:
            k = service.parse_k(request.query_params.get("k"))
            named = service.parse_named(request.query_params.get("rank_of"))
            data = await upload_bytes(request, service.limits.max_body_bytes)
            query = await run_in_threadpool(service.decode, data, k, named)
            return await batcher.submit(query)
        except UploadError as exc:
            return _error(exc.status, exc.message)
        finally:
            in_flight[0] -= 1

    return app
