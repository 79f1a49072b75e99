"""A request's picture bytes, read under the service's limits: the body refused (413) as soon
as it passes ``max_body_bytes`` (from Content-Length before a byte is read, then while
reading), a client that hangs up mid-body is :class:`ClientGone` (counted, never a
traceback), and the body's deadline is the request's (:mod:`advrank.serve.observe`).

A picture is the raw body (``image/*``) or the multipart field ``file``.
"""

from __future__ import annotations

from advrank.serve.errors import BadRequest, ClientGone, TooLarge, Unsupported

MULTIPART = "multipart/form-data"


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (:class:`TooLarge`) as soon as it exceeds ``limit`` bytes;
    :class:`ClientGone` when the client hangs up first."""
    from starlette.requests import ClientDisconnect

    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise TooLarge(f"the body is {int(length)} bytes; the limit is {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"the body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone(f"the client hung up after {size} bytes of its body") from None
    return b"".join(chunks)


def content_type(request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def picture_bytes(request, limit: int) -> tuple[bytes, str | None]:
    """``(bytes, file name)`` of the picture a request carries: the raw body (``image/*``)
    or the multipart field ``file`` (its file name, when it gives one)."""
    ctype = content_type(request)
    if not (ctype.startswith("image/") or ctype == MULTIPART):
        raise Unsupported(f"content type {ctype or '(none)'!r} is not a picture; send "
                          "image/png or image/jpeg, or multipart/form-data with a field "
                          "'file'")
    body = await read_body(request, limit)
    if ctype != MULTIPART:
        return body, None
    return await _multipart_file(request, body)


async def _multipart_file(request, body: bytes) -> tuple[bytes, str | None]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1,
                                     max_fields=10).parse()
    except MultiPartException as exc:
        raise BadRequest(f"bad multipart body: {exc.message}") from None
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise BadRequest("the multipart body needs a file field named 'file'")
    return await file.read(), file.filename
