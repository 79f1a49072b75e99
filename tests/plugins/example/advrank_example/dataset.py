"""A dataset: three classes of noisy 1x6x6 patterns, generated from a fixed seed."""

import torch

from advrank.data import TensorImageDataset
from advrank.registry import DATASETS


@DATASETS.register("blobs", image_shape=(1, 6, 6), mean=(0.5,), std=(0.3,), default_eps=0.2)
def load_blobs(split, root, download):
    gen = torch.Generator().manual_seed(0 if split == "train" else 1)
    templates = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(42))
    labels = torch.arange(90) % 3
    noise = 0.15 * torch.randn(90, 1, 6, 6, generator=gen)
    return TensorImageDataset((templates[labels] + noise).clamp(0, 1), labels, name="blobs")
