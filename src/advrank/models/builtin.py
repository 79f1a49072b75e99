"""The paper's architectures (§4.1, §5): ``c2f1``, ``lenet``, ``resnet18``; and ``resnet50``
(robrank's ResNet-50).

Each is a builder ``(image_shape, embed_dim) -> nn.Module`` registered in
:data:`advrank.registry.MODELS` with its default embedding size and, for ``pretrained``, the
torchvision model whose published weights fit its backbone (``train --pretrained``);
:func:`advrank.models.create_model` wraps it with the input normalisation.
"""

from __future__ import annotations

import torch
from torch import nn

from advrank.registry import MODELS


def _flat_size(module: nn.Module, image_shape) -> int:
    with torch.no_grad():
        return int(module(torch.zeros(1, *image_shape)).flatten(1).shape[1])


@MODELS.register("c2f1", default_embed_dim=1024)
def c2f1(image_shape, embed_dim: int) -> nn.Module:
    """§4.1: Madry's MNIST CNN without its last layer — conv5x5x32, pool, conv5x5x64, pool, FC."""
    features = nn.Sequential(
        nn.Conv2d(image_shape[0], 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    )
    return nn.Sequential(features, nn.Linear(_flat_size(features, image_shape), embed_dim))


@MODELS.register("lenet", default_embed_dim=128)
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


def _torchvision_resnet(factory, image_shape, embed_dim: int) -> nn.Module:
    """A torchvision ResNet with its classifier replaced by a linear embedding layer.

    Small inputs (under 64 px, e.g. 1x28x28) get a 3x3 stride-1 stem (then the usual max-pool,
    28 -> 14 -> 7 -> 4 -> 2) so the feature map is not reduced to nothing; 3x224x224 inputs keep
    the ImageNet stem, so ImageNet weights (``train --pretrained`` or ``--weights``) fit it.
    """
    net = factory(weights=None, num_classes=embed_dim)
    channels, height, _ = image_shape
    if height < 64:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


@MODELS.register("resnet18", default_embed_dim=512, pretrained="resnet18")
def resnet18(image_shape, embed_dim: int) -> nn.Module:
    """torchvision's ResNet-18 with an embedding head (robrank's ``rres18``)."""
    from torchvision.models import resnet18 as tv_resnet18

    return _torchvision_resnet(tv_resnet18, image_shape, embed_dim)


@MODELS.register("resnet50", default_embed_dim=512, pretrained="resnet50")
def resnet50(image_shape, embed_dim: int) -> nn.Module:
    """torchvision's ResNet-50 with a linear 2048 -> ``embed_dim`` embedding head: robrank's
    ``rres50`` backbone (its ``rres50p`` is this model trained with ``--defense act``), at
    224 px with the ImageNet normalisation inside the model (the cub/cars/sop specs')."""
    from torchvision.models import resnet50 as tv_resnet50

    return _torchvision_resnet(tv_resnet50, image_shape, embed_dim)
