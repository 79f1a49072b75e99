"""``digits``: scikit-learn's bundled 1,797 handwritten digits (8x8), the embedded default."""

from __future__ import annotations

from pathlib import Path

import torch

from advrank.data.base import TensorImageDataset
from advrank.registry import DATASETS


@DATASETS.register("digits", image_shape=(1, 8, 8), mean=(0.3,), std=(0.38,),
                   default_eps=0.3)
def load_digits(split: str, root: Path, download: bool) -> TensorImageDataset:
    """Values 0..16 scaled to [0, 1]; a fixed stratified 60/40 train/test split (seed 0)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=0.4, random_state=0, stratify=labels.numpy()
    )
    idx = torch.as_tensor(idx_train if split == "train" else idx_test)
    return TensorImageDataset(images[idx], labels[idx], name="digits")
