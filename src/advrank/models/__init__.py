"""Embedding models: ``create_model(name, image_shape, embed_dim)`` from the registry.

Models take ``[B, C, H, W]`` images in [0, 1] pixel space and return ``[B, embed_dim]``
embeddings. Mean/std normalisation is the model's first layer, so that an attack budget
epsilon is measured in pixel units exactly as in the paper. A builder that returns an
``(image backbone, text tower)`` pair (``clip-tiny``) gives a
:class:`~advrank.models.dual.DualEncoder`, whose ``forward`` is the image model.
"""

from __future__ import annotations

from collections.abc import Sequence

from advrank.core.checks import check_int, check_sequence_of_numbers
from advrank.errors import AdvrankError
from advrank.models.base import EmbeddingNet, Normalize
from advrank.models.dual import DualEncoder
from advrank.registry import MODELS

#: the largest embedding size accepted anywhere (options, checkpoints): far beyond any real
#: model, and it keeps a damaged or hostile value from allocating terabytes
MAX_EMBED_DIM = 65_536


def model_names() -> list[str]:
    return MODELS.names()


def default_embed_dim(name: str) -> int:
    return int(MODELS.entry(name).info["default_embed_dim"])


def create_model(
    name: str,
    image_shape: Sequence[int],
    embed_dim: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> EmbeddingNet | DualEncoder:
    """Build model ``name`` for ``image_shape = (C, H, W)``; normalisation defaults to none.
    A model with a text tower is a :class:`DualEncoder` around the ``EmbeddingNet``."""
    entry = MODELS.entry(name)
    if isinstance(image_shape, (str, bytes)) or not isinstance(image_shape, (list, tuple)) \
            or len(image_shape) != 3:
        raise AdvrankError(f"image_shape must be (C, H, W), got {image_shape!r}")
    image_shape = tuple(check_int(s, "image_shape entry", 1, 4096) for s in image_shape)
    embed_dim = check_int(entry.info["default_embed_dim"] if embed_dim is None else embed_dim,
                          "embed_dim", 1, MAX_EMBED_DIM)
    channels = image_shape[0]
    mean = (0.0,) * channels if mean is None else check_sequence_of_numbers(mean, "mean",
                                                                            channels)
    std = (1.0,) * channels if std is None else check_sequence_of_numbers(std, "std", channels,
                                                                          positive=True)
    backbone = entry.obj(tuple(image_shape), embed_dim)
    if isinstance(backbone, tuple):  # (image backbone, text tower)
        image, text = backbone
        return DualEncoder(EmbeddingNet(image, mean, std, image_shape, embed_dim), text)
    return EmbeddingNet(backbone, mean, std, image_shape, embed_dim)


__all__ = ["MAX_EMBED_DIM", "DualEncoder", "EmbeddingNet", "Normalize", "create_model",
           "default_embed_dim", "model_names"]
