"""Schema adapters: how the HTTP oracle asks a search API for a top-k list and reads its
answer as advrank's ids and scores (:class:`~advrank.oracles.schemas.base.Schema`), one
module per schema, registered in :data:`advrank.registry.SCHEMAS` and chosen with ``--schema
NAME[:ARGUMENT]``: ``advrank`` (the wire of ``advrank serve``, the default) and ``json:FILE``
(a generic JSON search API described by a small JSON file)."""

from advrank.oracles.schemas.base import Schema, get_schema

__all__ = ["Schema", "get_schema"]
