"""The HTTP search service: an ASGI app (FastAPI) over a :class:`~advrank.experiments.target.
Target` (model + gallery) and a :class:`~advrank.core.index.VectorIndex` over its embeddings.

Endpoints (every body is JSON):

* ``POST /search?k=K``: a picture (PNG or JPEG) as the raw body with an ``image/*`` content
  type, or as the field ``file`` of a ``multipart/form-data`` body -> ``{"ids": [...],
  "scores": [...]}``, the top K gallery members (gallery indices, nearest first). ``scores``
  are the metric's distances (smaller = nearer) when the service was started with scores,
  else ``null``: the realistic service shows ids only.
* ``GET /health`` -> ``{"status": "ok"}``; ``GET /info`` -> model, gallery size, index,
  input size, metric, the feedback it gives and its limits.

Limits (:class:`Limits`): body bytes (checked from Content-Length and while reading), pixels
(from the picture's header, before decoding), requests in flight (beyond it: 503 at once, with
``Retry-After``), the range of k. Every bad request gets one 4xx ``{"error": "..."}``; an
unexpected failure is a 500 with the same shape, and the service keeps answering.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time

import math
import threading
from dataclasses import asdict, dataclass
from typing import Any

import torch

from advrank.core.checks import check_int
from advrank.core.index import VectorIndex
from advrank.data.geometry import Geometry
from advrank.errors import AdvrankError
from advrank.serve.decode import FORMATS, UploadError, decode_upload

MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class Limits:
    """What one request may use: ``max_body_bytes`` of upload, ``max_pixels`` of picture,
    ``max_concurrency`` requests in flight at once, ``max_k`` results (at most |X|);
    ``default_k`` when the query names none."""

    max_body_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_concurrency: int = 4
    max_k: int = 100
    default_k: int = 10

    def __post_init__(self):
        check_int(self.max_body_bytes, "max body bytes", low=1, high=2**40)
        check_int(self.max_pixels, "max pixels", low=1, high=2**40)
        check_int(self.max_concurrency, "max concurrency", low=1, high=100_000)
        check_int(self.max_k, "max k", low=1)
        check_int(self.default_k, "default k", low=1, high=self.max_k)


def target_geometry(target) -> Geometry:
    """How the target reads pictures: a collection's recorded geometry, else the whole
    picture squeezed to the checkpoint's input size (as :func:`load_target` reads folders)."""
    g = target.info.get("geometry")
    if g is not None:
        return Geometry(tuple(g["input_size"]), g["crop_pct"], g["interpolation"])
    return Geometry(tuple(target.meta["image_shape"]), None, "bilinear")


class SearchService:
    """Upload bytes -> model input -> embedding -> index search; one forward at a time (a lock:
    the model is not re-entrant under every backend, and a 2-core box gains nothing)."""

    def __init__(self, target, index: VectorIndex, scores: bool, limits: Limits):
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

    @torch.no_grad()
    def search(self, data: bytes, k: int) -> dict[str, Any]:
        """``{"ids": [k], "scores": [k] or None}`` for one uploaded picture's bytes."""
        image = decode_upload(data, self.geometry, self.limits.max_pixels)
        with self.lock:
            model = self.target.model
            emb = model(image[None].to(self.target.device)).float()
            if not torch.isfinite(emb).all():
                raise UploadError(422, "the model gives a non-finite embedding for this "
                                       "picture")
            ids, scores = self.index.search(emb, k)
        keep = ids[0] >= 0  # an approximate index may find fewer than k
        out_ids, out_scores = ids[0][keep].tolist(), scores[0][keep].tolist()
        return {"ids": [int(i) for i in out_ids],
                "scores": [float(s) for s in out_scores if math.isfinite(s)]
                if self.scores else None}

    def info(self) -> dict[str, Any]:
        t = self.target
        return {"model": t.meta.get("arch"), "source": t.source, "fingerprint": t.fingerprint,
                "dataset": t.meta.get("dataset"), "gallery_size": len(t.gallery),
                "metric": t.meta.get("metric"), "input_size": list(self.geometry.input_size),
                "geometry": self.geometry.describe(), "index": self.index.info,
                "feedback": f"top-k ids{' and scores' if self.scores else ''}",
                "scores": "distance, smaller is nearer" if self.scores else None,
                "formats": list(FORMATS), "max_k": self.max_k,
                "limits": asdict(self.limits)}


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


def create_app(target, index: VectorIndex, scores: bool = False,
               limits: Limits | None = None):
    """The FastAPI app serving ``target``'s gallery through ``index`` (see the module
    docstring for the endpoints); ``scores``: include distances in search answers."""
    fastapi = _fastapi()
    from starlette.concurrency import run_in_threadpool

    service = SearchService(target, index, bool(scores), limits or Limits())
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
    async def search(request: fastapi.Request):
        if in_flight[0] >= service.limits.max_concurrency:
            return _error(503, f"busy: {in_flight[0]} searches in flight (the limit); retry "
                               "later", {"Retry-After": "1"})
        in_flight[0] += 1
        try:
            k = service.parse_k(request.query_params.get("k"))
            data = await upload_bytes(request, service.limits.max_body_bytes)
            return await run_in_threadpool(service.search, data, k)
        except UploadError as exc:
            return _error(exc.status, exc.message)
        finally:
            in_flight[0] -= 1

    return app
