"""The candidate set X, embedded once: ``Gallery`` holds the images (by index), the
embeddings ``[N, D]``, the labels ``[N]`` and the distance every ranking uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from advrank.core import distributed
from advrank.core.checks import check_dataset, check_finite, check_progress
from advrank.core.distances import Distance, get_distance
from advrank.core.execution import BatchSplitter
from advrank.core.metrics import retrieval_metrics
from advrank.core.runtime import progress_bar, resolve_device
from advrank.errors import AdvrankError


@torch.no_grad()
def embed_dataset(
    model: nn.Module, dataset, device: torch.device | str = "cpu", batch_size: int = 512,
    num_workers: int = 0, progress: bool | None = None,
) -> torch.Tensor:
    """Embeddings ``[N, D]`` of a whole dataset (model in eval mode), returned on ``device``.

    Refuses non-finite embeddings (a model with NaN/Inf weights or a zero std) instead of
    letting them become results. Under torchrun each process embeds a contiguous share of
    whole batches and the shares are all-gathered: every process gets the embeddings one
    process would compute (the same batches through the same model).
    """
    if not isinstance(model, nn.Module):
        raise AdvrankError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_dataset(dataset)
    check_progress(progress)
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    model.eval()
    device = resolve_device(device)
    start, end = distributed.shard_range(len(dataset), batch_size)
    bar = progress_bar(total=end - start, desc="embed gallery", unit="img",
                       enabled=progress if distributed.is_main() else False)
    chunks = []
    splitter = BatchSplitter(batch_size, "images to embed", device=device)

    def embed(x: torch.Tensor) -> torch.Tensor:  # halves of the batch on out-of-memory
        return torch.cat(splitter.run(lambda a, b: model(x[a:b].to(device)), 0, x.shape[0]))

    if hasattr(dataset, "images"):  # in-memory tensor dataset: slice directly, no loader overhead
        for i in range(start, end, batch_size):
            chunks.append(embed(dataset.images[i : min(end, i + batch_size)]))
            bar.update(chunks[-1].shape[0])
    else:
        part = dataset if (start, end) == (0, len(dataset)) else Subset(dataset,
                                                                         range(start, end))
        loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for x, _ in loader:
            chunks.append(embed(x))
            bar.update(x.shape[0])
    bar.close()
    emb = torch.cat(chunks) if chunks else torch.empty(0, 0, device=device)
    return check_finite(distributed.all_gather_rows(emb), "the gallery embeddings")


@dataclass
class Gallery:
    """The candidate set X: its dataset (images by index), embeddings ``[N, D]``, labels ``[N]``."""

    dataset: Any  # an advrank ImageDataset (data/ sits above core: not imported here)
    embeddings: torch.Tensor
    labels: torch.Tensor
    distance: Distance

    @classmethod
    def build(cls, model: nn.Module, dataset, distance: Distance | str,
              device: torch.device | str = "cpu", progress: bool | None = None) -> Gallery:
        """Embed the gallery once (model in eval mode)."""
        emb = embed_dataset(model, dataset, device, progress=progress)
        return cls(dataset, emb, dataset.labels.to(emb.device), get_distance(distance))

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    def metrics(self, ks=(1, 2, 4, 8), with_nmi: bool = False) -> dict[str, float]:
        """Recall@K, mAP (and NMI), all in percent, with X as its own (left-out) query set."""
        return retrieval_metrics(self.embeddings, self.labels, self.distance, ks, with_nmi)

    def images(self, index: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` in [0, 1] of the members at ``index [B]``, on the device."""
        return self.dataset.get_images(index.cpu()).to(self.embeddings.device)
