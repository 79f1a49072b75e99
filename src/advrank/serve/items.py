"""What an id means, for people and clients: the search page at ``/``, ``GET /items/{id}``
(its base file name, label and class name) and ``GET /items/{id}/thumbnail`` (a PNG of the
picture as the model reads it)."""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from advrank.oracles.wire import ErrorAnswer, ItemAnswer
from advrank.serve.page import PAGE, POLICY
from advrank.serve.routes import Responses

router = APIRouter()

ItemId = Annotated[int, Path(ge=0, le=2**62, description="an id a search answered")]
MISSING: Responses = {
    404: {"model": ErrorAnswer, "description": "no such item (or deleted)"}}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page():
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": POLICY,
                                       "Cache-Control": "no-cache"})


@router.get("/items/{item_id}", response_model=ItemAnswer, responses=MISSING,
            summary="what an id is")
async def item(request: Request, item_id: ItemId):
    return request.app.state.service.catalog.item(item_id)


@router.get("/items/{item_id}/thumbnail", response_class=Response, responses={
    **MISSING, 200: {"content": {"image/png": {}}, "description": "the picture, as a PNG"}},
    summary="the item's picture as the model reads it")
async def thumbnail(request: Request, item_id: ItemId):
    # a collection's picture is read from disk and encoded: off the event loop
    png = await run_in_threadpool(request.app.state.service.catalog.thumbnail, item_id)
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
