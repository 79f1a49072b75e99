"""What the defense tests share: a digits batch and tiny seeded C2F1 models."""

from __future__ import annotations

import pytest
import torch

from advrank.data import dataset_spec, load_dataset
from advrank.models import create_model


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """60 digits training images ``[60, 1, 8, 8]`` and their labels ``[60]``."""
    ds = load_dataset("digits", "train")
    return ds.images[:60], ds.labels[:60]


@pytest.fixture
def tiny_model():
    """A factory: ``tiny_model(seed)`` -> a fresh C2F1 (16-d embeddings) seeded by ``seed``."""
    def make(seed: int = 0):
        torch.manual_seed(seed)
        info = dataset_spec("digits")
        return create_model("c2f1", (1, 8, 8), embed_dim=16, mean=info.mean, std=info.std)

    return make
