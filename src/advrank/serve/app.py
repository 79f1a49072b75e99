"""The HTTP search service (``advrank serve``): an ASGI app (FastAPI) over a Target (model +
gallery) and a :class:`~advrank.core.index.VectorIndex` over its embeddings.

:func:`create_app` is the factory: its ``lifespan`` starts the engine (the queue and its
worker, :class:`~advrank.serve.batcher.Batcher`) and stops it; the routes are in
:mod:`advrank.serve.routes`; :class:`~advrank.serve.observe.Observe` puts a deadline, an
access-log line and metrics around every request; and one exception handler maps the
engine's errors (:mod:`advrank.serve.errors`) to HTTP statuses with ``{"error": ...}``
bodies. OpenAPI at ``/docs`` and ``/openapi.json``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from advrank.core.index import VectorIndex
from advrank.core.target import SearchTarget
from advrank.errors import AdvrankError
from advrank.serve import errors
from advrank.serve.limits import Limits

#: the HTTP status of each kind of error (499: nginx's "client closed request")
STATUS: dict[type[errors.ServiceError], int] = {
    errors.BadRequest: 400, errors.Unauthorized: 401, errors.NotFound: 404,
    errors.RequestTimeout: 408, errors.TooLarge: 413, errors.Unsupported: 415,
    errors.Unprocessable: 422, errors.Busy: 503, errors.ClientGone: 499,
}


def status_of(exc: errors.ServiceError) -> int:
    """The HTTP status of ``exc`` (that of its nearest listed class)."""
    return next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), 500)


def _error(status: int, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install_errors(app) -> None:
    """The engine's errors mapped to HTTP by one handler; the framework's own (unknown path,
    wrong method, a parameter of the wrong type) given the same ``{"error": ...}`` shape; an
    unexpected exception a 500 of that shape (and its traceback in the log: a bug)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(errors.ServiceError)
    async def service_error(request, exc: errors.ServiceError):
        headers = None
        if isinstance(exc, errors.Busy):
            headers = {"Retry-After": str(exc.retry_after)}
        elif isinstance(exc, errors.Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        return _error(status_of(exc), exc.message, headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        def one(e) -> str:
            where = ".".join(str(p) for p in e.get("loc", ())[1:])
            return f"{where}: {e.get('msg')}" if where else str(e.get("msg"))
        return _error(400, "bad request: " + "; ".join(one(e) for e in exc.errors()))

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
               limits: Limits | None = None, log: Callable[[str], None] | None = None,
               token: str | None = None, pipeline: str | None = None):
    """The FastAPI app serving ``target``'s gallery through ``index``: ``scores`` shows
    distances in search answers; ``limits`` bound each request; ``log`` receives one
    access-log line per request (None: none); ``token``: the catalog is writable
    (``POST /items``, ``DELETE /items/{id}``) by requests that carry it; ``pipeline``
    (``png``, ``jpeg:Q``): every upload is re-encoded so before it is embedded."""
    fastapi = _fastapi()
    from advrank import __version__
    from advrank.serve import items, writes
    from advrank.serve.batcher import Batcher
    from advrank.serve.engine import SearchService
    from advrank.serve.metrics import ServiceMetrics
    from advrank.serve.observe import Observe
    from advrank.serve.routes import router

    limits = limits or Limits()
    metrics = ServiceMetrics()
    if token is not None and (not isinstance(token, str) or len(token) < 8 or
                              not token.isprintable() or " " in token):
        raise AdvrankError("the write token must be at least 8 printable characters, no "
                           "spaces")
    service = SearchService(target, index, scores, limits, metrics, pipeline)
    service.writable = token is not None
    batcher = Batcher(service)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = fastapi.FastAPI(title="advrank search", version=__version__, lifespan=lifespan,
                          description="Search a model's gallery with a picture (advrank "
                                      "serve). Every error is {\"error\": \"...\"}.",
                          docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.service, app.state.batcher, app.state.metrics = service, batcher, metrics
    app.state.token = token
    install_errors(app)
    app.add_middleware(Observe, metrics=metrics, log=log,
                       request_timeout=limits.request_timeout)
    app.include_router(router)
    app.include_router(items.router)
    if token is not None:
        app.include_router(writes.router)
    return app
