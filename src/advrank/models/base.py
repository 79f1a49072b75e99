"""What every model is: ``[B, C, H, W]`` images in [0, 1] -> ``[B, D]`` embeddings, with the
input normalisation inside the model so that an attack budget epsilon is in pixel units."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` inside the model (inputs stay in [0, 1])."""

    mean: torch.Tensor  # buffers [1, C, 1, 1]
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class EmbeddingNet(nn.Module):
    """``Normalize`` followed by a backbone that maps images to embeddings."""

    def __init__(self, backbone: nn.Module, mean, std, image_shape, embed_dim: int):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.image_shape = tuple(image_shape)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, D]
        return self.backbone(self.normalize(x))
