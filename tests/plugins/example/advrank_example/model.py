"""A model: a two-layer perceptron embedder."""

from torch import nn

from advrank.registry import MODELS


@MODELS.register("mlp", default_embed_dim=16)
def mlp(image_shape, embed_dim: int) -> nn.Module:
    c, h, w = image_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 32), nn.ReLU(),
                         nn.Linear(32, embed_dim))
