"""What every dataset is: ``labels [N]`` (int64), ``image_shape`` ``(C, H, W)`` and batched access
``get_images(index [B]) -> [B, C, H, W]`` floats in [0, 1], whatever the storage."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from advrank.errors import AdvrankError


class ImageDataset(Dataset):
    """Base class: ``labels`` and ``image_shape`` plus batched access by index."""

    labels: torch.Tensor
    image_shape: tuple[int, int, int]
    name: str

    def __len__(self) -> int:
        return int(self.labels.numel())

    def get_images(self, index: torch.Tensor) -> torch.Tensor:
        """Images at ``index`` (``LongTensor[B]``) as ``FloatTensor[B, C, H, W]`` in [0, 1]."""
        return torch.stack([self[int(i)][0] for i in index.tolist()])


def check_dataset(dataset) -> None:
    """Refuse what is not a dataset of labelled images (``labels [N]`` int, N >= 2)."""
    labels = getattr(dataset, "labels", None)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point() \
            or not hasattr(dataset, "__getitem__") or labels.numel() < 2:
        raise AdvrankError(f"expected a dataset of at least 2 labelled images (an "
                           f"advrank ImageDataset), got {type(dataset).__name__}")


class TensorImageDataset(ImageDataset):
    """Images held in memory as one ``FloatTensor[N, C, H, W]`` in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str = "tensor"):
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise AdvrankError(f"images must be [N, C, H, W], got "
                               f"{tuple(getattr(images, 'shape', ()))}")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
            raise AdvrankError("labels must be a 1-D tensor")
        if images.shape[0] != labels.shape[0]:
            raise AdvrankError(
                f"{images.shape[0]} images but {labels.shape[0]} labels; they must match"
            )
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise AdvrankError(f"labels must be integers, got dtype {labels.dtype}")
        self.images = images.float().contiguous()
        self.labels = labels.long().contiguous()
        self.image_shape = tuple(images.shape[1:])
        self.name = name

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]

    def get_images(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index.cpu()]
