"""The search endpoints: ``POST /search``, ``GET /info``, ``GET /health``, ``GET /metrics``.

Parameters are validated by FastAPI (``Query``) and by the engine's checks, in dependencies
that run in order: the query string first (a bad ``k`` costs no upload), then the body under
its limits, then the decode; only a decoded picture takes a place in the queue. Every answer
is a wire model (:mod:`advrank.oracles.wire`); every error a ``ServiceError`` the app's one
handler turns into a status and ``{"error": ...}``.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time

from typing import Annotated, Any

import torch
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from advrank.oracles.wire import ErrorAnswer, RanksAnswer, SearchAnswer
from advrank.serve import engine
from advrank.serve.body import content_type, picture_bytes, read_body
from advrank.serve.schema import Health, ServiceInfo

router = APIRouter()

#: pictures this small decode on the event loop (a thread hop costs more than the decode)
INLINE_DECODE_BYTES = 64 * 1024
#: a text search's JSON body at most (a text is at most 10,000 characters)
MAX_TEXT_BODY = 64 * 1024

Responses = dict[int | str, dict[str, Any]]
ERRORS: Responses = {
    code: {"model": ErrorAnswer, "description": why} for code, why in (
    (400, "a bad parameter or an unreadable picture"), (408, "the request took too long"),
    (413, "a body or picture over the limits"), (415, "not a PNG or JPEG"),
    (422, "a picture the model cannot embed"), (503, "the queue is full (see Retry-After)"))}

PICTURES: dict[str, Any] = {
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}}}
PICTURE_BODY = {"requestBody": {"required": True, "content": PICTURES}}
#: a search's body: a picture, or a text where the model has a text tower
SEARCH_BODY = {"requestBody": {"required": True, "content": {
    **PICTURES,
    "application/json": {"schema": {"type": "object", "required": ["text"], "properties": {
        "text": {"type": "string"}}}}}}}


def the_service(request: Request) -> engine.SearchService:
    return request.app.state.service


def search_params(
    request: Request,
    k: int | None = Query(None, ge=1, description="how many results (default: the "
                          "service's --k; at most /info's max_k)"),
    rank_of: str | None = Query(None, max_length=200_000, description="ids separated by "
                                "commas: answer where each sits in the top-k list instead"),
) -> tuple[int, torch.Tensor | None]:
    service = the_service(request)
    return service.check_k(k), service.check_named(rank_of)


async def decoded_picture(request: Request, with_name: bool = False):
    """The request's picture as the model's input (the body read under its limits); with
    ``with_name``, ``(picture, file name or None)``."""
    service = the_service(request)
    data, name = await picture_bytes(request, service.limits.max_body_bytes)
    if len(data) <= INLINE_DECODE_BYTES:
        image = service.decode(data)
    else:
        image = await run_in_threadpool(service.decode, data)
    return (image, name) if with_name else image


Params = Annotated[tuple[int, torch.Tensor | None], Depends(search_params)]


async def search_query(request: Request, params: Params) -> engine.Query:
    # depends on the parameters: a search with a bad k is refused before its body is read
    if content_type(request) == "application/json":  # a text query: {"text": "..."}
        service = the_service(request)
        body = await read_body(request, min(service.limits.max_body_bytes, MAX_TEXT_BODY))
        return engine.Query(None, *params, text=service.check_text(body))
    return engine.Query(await decoded_picture(request), *params)


@router.post("/search", response_model=SearchAnswer | RanksAnswer, responses=ERRORS,
             openapi_extra=SEARCH_BODY, summary="search the gallery with a picture or a text")
async def search(request: Request, query: Annotated[engine.Query, Depends(search_query)]):
    """The top-k items nearest to the picture (raw ``image/png`` or ``image/jpeg`` body, or
    the multipart field ``file``) or to the text (JSON ``{"text": ...}``, where ``/info``
    says ``text``: a model with a text tower): ``{"ids", "scores"}`` nearest first, or with
    ``rank_of`` ``{"ranks"}``, where each named id sits in that list (``null`` beyond it)."""
    return await request.app.state.batcher.submit(query)


@router.get("/info", response_model=ServiceInfo, summary="what the service ranks and how")
async def info(request: Request):
    return the_service(request).info()


@router.get("/health", response_model=Health, summary="the service answers")
async def health():
    return Health(status="ok")


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text format)")
async def metrics(request: Request):
    m = request.app.state.metrics
    m.queue.set(request.app.state.batcher.waiting)
    m.items.set(the_service(request).index.size)
    return Response(m.render(), media_type=m.content_type)
