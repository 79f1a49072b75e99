"""A defense: train on uniformly noised inputs (a loss hook that changes the inputs)."""

import torch

from advrank.defenses.base import Defense
from advrank.registry import DEFENSES


@DEFENSES.register("noise")
class NoiseDefense(Defense):
    name = "noise"

    def __init__(self, eps, metric=None):
        self._eps = float(eps)

    @property
    def eps(self):
        return self._eps

    def training_loss(self, model, images, labels, criterion):
        noisy = (images + (2 * torch.rand_like(images) - 1) * self._eps).clamp(0, 1)
        emb = model(noisy)
        return criterion(emb, labels), emb

    def describe(self):
        return {"defense": self.name, "eps": self._eps}
