"""The HTTP search service (``advrank serve``): an ASGI app over a Target and an index.

It sits above :mod:`advrank.experiments` (it serves a loaded Target) and holds no attack logic.
FastAPI and uvicorn are imported only when a service is created (``pip install
'advrank[serve]'``).
"""

from advrank.serve.app import Limits, SearchService, create_app
from advrank.serve.decode import UploadError, decode_upload

__all__ = ["Limits", "SearchService", "UploadError", "create_app", "decode_upload"]
