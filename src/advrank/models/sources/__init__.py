"""Models from outside advrank, one module per source (``timm``, ``torchvision``,
``open_clip``, ``torchscript``, ``python``), registered in
:data:`advrank.registry.MODEL_SOURCES`; :func:`load_source_model` builds any of them."""

from advrank.models.sources.base import (
    ExternalEmbedder,
    SourceNet,
    SourceOptions,
    load_source_model,
    parse_source,
)

__all__ = ["ExternalEmbedder", "SourceNet", "SourceOptions", "load_source_model", "parse_source"]
