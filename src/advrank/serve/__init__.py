"""The HTTP search service (``advrank serve``): an ASGI app over a Target and an index.

It sits above :mod:`advrank.experiments` (it serves a loaded Target) and holds no attack logic.
One job per module: :mod:`~advrank.serve.app` (the factory, its lifespan and error mapping),
:mod:`~advrank.serve.routes` (search, info, health, metrics), :mod:`~advrank.serve.items`
(what an id is, and the page of :mod:`~advrank.serve.page`), :mod:`~advrank.serve.writes`
(the catalog's write path), :mod:`~advrank.serve.engine` (decode, embed, search, insert),
:mod:`~advrank.serve.forward` (batch-invariant forwards), :mod:`~advrank.serve.catalog`
(ids, names, pictures), :mod:`~advrank.serve.batcher` (the queue),
:mod:`~advrank.serve.body` (reading uploads), :mod:`~advrank.serve.decode` (pictures),
:mod:`~advrank.serve.observe` (deadline, access log), :mod:`~advrank.serve.metrics`
(Prometheus), :mod:`~advrank.serve.schema` (what /info adds to the wire),
:mod:`~advrank.serve.limits` and :mod:`~advrank.serve.errors` (what a request can get
wrong). FastAPI and uvicorn are needed (``pip install 'advrank[serve]'``).
"""

from advrank.serve.app import create_app
from advrank.serve.decode import decode_upload
from advrank.serve.engine import SearchService
from advrank.serve.errors import ServiceError
from advrank.serve.limits import Limits

__all__ = ["Limits", "SearchService", "ServiceError", "create_app", "decode_upload"]
