"""The catalog's write path (``advrank serve --writable --token TOKEN``): ``POST /items``
adds a picture (decoded, and re-encoded by ``--pipeline``, exactly as a search upload is;
embedded as a search embeds it; inserted into the live index the way the index kind
inserts) and answers its new id; ``DELETE /items/{id}`` removes an item for good.

Both need ``Authorization: Bearer TOKEN`` (401 otherwise, checked before the body is read);
the token is compared in constant time and never logged nor shown. Same body limits and
deadline as a search. The write runs on the engine's own thread, between search batches.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from advrank.oracles.wire import DeleteAnswer, ErrorAnswer, InsertAnswer
from advrank.serve.errors import Unauthorized
from advrank.serve.items import ItemId
from advrank.serve.routes import ERRORS, PICTURE_BODY, Responses, decoded_picture

router = APIRouter()
DENIED: Responses = {
    401: {"model": ErrorAnswer, "description": "no token, or a wrong one"}}


def authorized(request: Request) -> None:
    """The request carries the service's bearer token (else :class:`Unauthorized`)."""
    token = request.app.state.token
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("writes need the header Authorization: Bearer TOKEN")
    if token is None or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("wrong token")


Authorized = Annotated[None, Depends(authorized)]


async def _on_engine(request: Request, call, *args):
    """``call(*args)`` on the engine's thread (searches and writes never overlap)."""
    return await asyncio.get_running_loop().run_in_executor(
        request.app.state.batcher.pool, call, *args)


@router.post("/items", status_code=201, response_model=InsertAnswer,
             responses={**ERRORS, **DENIED}, openapi_extra=PICTURE_BODY,
             summary="add a picture to the catalog")
async def insert(request: Request, _: Authorized):
    """The picture (as a search takes it) becomes an item; its id is the next one, never
    reused. A multipart upload's file name is kept (its base name)."""
    image, name = await decoded_picture(request, with_name=True)
    return await _on_engine(request, request.app.state.service.insert, image, name)


@router.delete("/items/{item_id}", response_model=DeleteAnswer,
               responses={**DENIED, 404: {"model": ErrorAnswer, "description": "no such item"}},
               summary="remove an item for good")
async def delete(request: Request, item_id: ItemId, _: Authorized):
    return await _on_engine(request, request.app.state.service.delete, item_id)
