"""Embedding models: ``create_model(name, image_shape, embed_dim)`` from the registry.

Models take ``[B, C, H, W]`` images in [0, 1] pixel space and return ``[B, embed_dim]``
embeddings. Mean/std normalisation is the model's first layer, so that an attack budget
epsilon is measured in pixel units exactly as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

from advrank.errors import AdvrankError
from advrank.models.base import EmbeddingNet, Normalize
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
) -> EmbeddingNet:
    """Build model ``name`` for ``image_shape = (C, H, W)``; normalisation defaults to none."""
    entry = MODELS.entry(name)
    if len(image_shape) != 3 or any(int(s) < 1 for s in image_shape):
        raise AdvrankError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    embed_dim = int(entry.info["default_embed_dim"] if embed_dim is None else embed_dim)
    if not 0 < embed_dim <= MAX_EMBED_DIM:
        raise AdvrankError(f"embed_dim must lie in [1, {MAX_EMBED_DIM}], got {embed_dim}")
    channels = image_shape[0]
    mean = tuple(mean) if mean is not None else (0.0,) * channels
    std = tuple(std) if std is not None else (1.0,) * channels
    if len(mean) != channels or len(std) != channels:
        raise AdvrankError(f"mean/std need {channels} values (one per channel), got "
                           f"{len(mean)}/{len(std)}")
    if any(s <= 0 for s in std):
        raise AdvrankError(f"std must be positive, got {list(std)}")
    backbone = entry.obj(tuple(image_shape), embed_dim)
    return EmbeddingNet(backbone, mean, std, image_shape, embed_dim)


__all__ = ["MAX_EMBED_DIM", "EmbeddingNet", "Normalize", "create_model", "default_embed_dim",
           "model_names"]
