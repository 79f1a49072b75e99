"""Embedding models from a registry: ``create_model(name, image_shape, embed_dim)``.

Models take ``[B, C, H, W]`` images in [0, 1] pixel space and return ``[B, embed_dim]``
embeddings. Mean/std normalisation is the model's first layer, so that an attack budget
epsilon is measured in pixel units exactly as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from advrank.errors import AdvrankError

_MODELS: dict[str, tuple[Callable[..., nn.Module], int]] = {}


def register_model(name: str, default_embed_dim: int):
    """Decorator: register ``builder(image_shape, embed_dim) -> nn.Module`` under ``name``."""

    def wrap(builder):
        _MODELS[name] = (builder, default_embed_dim)
        return builder

    return wrap


def model_names() -> list[str]:
    return sorted(_MODELS)


def default_embed_dim(name: str) -> int:
    return _lookup(name)[1]


def _lookup(name: str):
    try:
        return _MODELS[name]
    except KeyError:
        raise AdvrankError(
            f"unknown model {name!r}; choose one of: {', '.join(model_names())}"
        ) from None


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` inside the model (inputs stay in [0, 1])."""

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


def create_model(
    name: str,
    image_shape: Sequence[int],
    embed_dim: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> EmbeddingNet:
    """Build model ``name`` for ``image_shape = (C, H, W)``; normalisation defaults to none."""
    builder, default_dim = _lookup(name)
    if len(image_shape) != 3:
        raise AdvrankError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    embed_dim = int(default_dim if embed_dim is None else embed_dim)
    if embed_dim <= 0:
        raise AdvrankError(f"embed_dim must be positive, got {embed_dim}")
    channels = image_shape[0]
    mean = tuple(mean) if mean is not None else (0.0,) * channels
    std = tuple(std) if std is not None else (1.0,) * channels
    backbone = builder(tuple(image_shape), embed_dim)
    return EmbeddingNet(backbone, mean, std, image_shape, embed_dim)


def _flat_size(module: nn.Module, image_shape) -> int:
    with torch.no_grad():
        return int(module(torch.zeros(1, *image_shape)).flatten(1).shape[1])


@register_model("c2f1", default_embed_dim=1024)
def c2f1(image_shape, embed_dim: int) -> nn.Module:
    """§4.1: Madry's MNIST CNN without its last layer — conv5x5x32, pool, conv5x5x64, pool, FC."""
    features = nn.Sequential(
        nn.Conv2d(image_shape[0], 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    )
    return nn.Sequential(features, nn.Linear(_flat_size(features, image_shape), embed_dim))


@register_model("lenet", default_embed_dim=128)
def lenet(image_shape, embed_dim: int) -> nn.Module:
    """LeNet (LeCun et al. 1998) style: conv5x5x20, pool, conv5x5x50, pool, FC500, FC embed."""
    features = nn.Sequential(
        nn.Conv2d(image_shape[0], 20, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    )
    return nn.Sequential(
        features, nn.Linear(_flat_size(features, image_shape), 500), nn.ReLU(),
        nn.Linear(500, embed_dim),
    )


@register_model("resnet18", default_embed_dim=512)
def resnet18(image_shape, embed_dim: int) -> nn.Module:
    """torchvision's ResNet-18 with its classifier replaced by an embedding layer.

    Small inputs (under 64 px, e.g. 1x28x28) get a 3x3 stride-1 stem (then the usual max-pool,
    28 -> 14 -> 7 -> 4 -> 2) so the feature map is not reduced to nothing; 3x224x224 inputs keep
    the ImageNet stem.
    """
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=embed_dim)
    channels, height, _ = image_shape
    if height < 64:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net
