"""The candidate set X, embedded once: ``Gallery`` holds the images (by index), the
embeddings ``[N, D]``, the labels ``[N]`` and the distance every ranking uses."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from advrank.core.checks import check_finite, check_flag
from advrank.core.distances import Distance, get_distance
from advrank.core.runtime import resolve_device
from advrank.data.base import check_dataset
from advrank.errors import AdvrankError


@torch.no_grad()
def embed_dataset(
    model: nn.Module, dataset, device: torch.device | str = "cpu", batch_size: int = 512,
    num_workers: int = 0, progress: bool = False,
) -> torch.Tensor:
    """Embeddings ``[N, D]`` of a whole dataset (model in eval mode), returned on ``device``.

    Refuses non-finite embeddings (a model with NaN/Inf weights or a zero std) instead of
    letting them become results.
    """
    if not isinstance(model, nn.Module):
        raise AdvrankError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_dataset(dataset)
    check_flag(progress, "progress")
    model.eval()
    device = resolve_device(device)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset), desc="embed gallery", file=sys.stderr, leave=False,
                   unit="img")
    if hasattr(dataset, "images"):  # in-memory tensor dataset: slice directly, no loader overhead
        chunks = []
        for i in range(0, len(dataset), batch_size):
            chunks.append(model(dataset.images[i : i + batch_size].to(device)))
            if bar is not None:
                bar.update(chunks[-1].shape[0])
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                            num_workers=num_workers)
        chunks = []
        for x, _ in loader:
            chunks.append(model(x.to(device)))
            if bar is not None:
                bar.update(x.shape[0])
    if bar is not None:
        bar.close()
    return check_finite(torch.cat(chunks), "the gallery embeddings")


@dataclass
class Gallery:
    """The candidate set X: its dataset (images by index), embeddings ``[N, D]``, labels ``[N]``."""

    dataset: object
    embeddings: torch.Tensor
    labels: torch.Tensor
    distance: Distance

    @classmethod
    def build(cls, model: nn.Module, dataset, distance: Distance | str,
              device: torch.device | str = "cpu", progress: bool = False) -> Gallery:
        """Embed the gallery once (model in eval mode)."""
        emb = embed_dataset(model, dataset, device, progress=progress)
        return cls(dataset, emb, dataset.labels.to(emb.device), get_distance(distance))

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    def images(self, index: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` in [0, 1] of the members at ``index [B]``, on the device."""
        return self.dataset.get_images(index.cpu()).to(self.embeddings.device)
