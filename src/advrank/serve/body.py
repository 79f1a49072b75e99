"""A request's picture bytes, read under the service's limits: the body refused (413) as soon
as it passes ``max_body_bytes`` (from Content-Length before a byte is read, then while
reading), a client that hangs up mid-body is :class:`ClientGone` (counted, never a
traceback), and the body's deadline is the request's (:mod:`advrank.serve.observe`).

A picture is the raw body (``image/*``), the multipart field ``file``, or a raw body sent
with no content type or a generic one (``curl --data-binary`` sends a form type,
``requests.post(data=...)`` none) whose first bytes are a PNG's or a JPEG's signature: the
bytes decide, and the limits hold all the same.
"""

from __future__ import annotations

from advrank.serve.errors import BadRequest, ClientGone, TooLarge, Unsupported

MULTIPART = "multipart/form-data"
#: content types that say nothing about the bytes: the body is sniffed
GENERIC = ("", "application/octet-stream", "binary/octet-stream",
           "application/x-www-form-urlencoded")
#: the signatures of the formats the service reads
SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"))


def sniff(data: bytes) -> str | None:
    """The picture format ``data`` starts like (``PNG``, ``JPEG``), or None."""
    return next((fmt for magic, fmt in SIGNATURES if data.startswith(magic)), None)


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
    """``(bytes, file name)`` of the picture a request carries: the raw body (``image/*``,
    or a generic type with a picture's signature) or the multipart field ``file`` (its file
    name, when it gives one)."""
    ctype = content_type(request)
    generic = ctype in GENERIC
    if not (ctype.startswith("image/") or ctype == MULTIPART or generic):
        raise Unsupported(f"content type {ctype!r} is not a picture; send image/png or "
                          "image/jpeg, or multipart/form-data with a field 'file'")
    body = await read_body(request, limit)
    if ctype == MULTIPART:
        return await _multipart_file(request, body)
    if generic and sniff(body) is None:
        raise Unsupported(f"the body (content type {ctype or '(none)'!r}) is not a PNG or "
                          "JPEG; send a picture, as image/png or image/jpeg")
    return body, None


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
