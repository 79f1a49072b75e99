"""What every dataset is: ``labels [N]`` (int64), ``image_shape`` ``(C, H, W)`` and batched access
``get_images(index [B]) -> [B, C, H, W]`` floats in [0, 1], whatever the storage."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from advrank.errors import AdvrankError


class ImageDataset(Dataset):
    """Base class: ``labels`` and ``image_shape`` plus batched access by index.

    ``class_names`` (optional) names the labels; ``item_name(i)`` says which image ``i`` is
    (a file's relative path for folders), for reports.
    """

    labels: torch.Tensor
    image_shape: tuple[int, int, int]
    name: str
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.numel())

    def get_images(self, index: torch.Tensor) -> torch.Tensor:
        """Images at ``index`` (``LongTensor[B]``) as ``FloatTensor[B, C, H, W]`` in [0, 1]."""
        return torch.stack([self[int(i)][0] for i in index.tolist()])

    def item_name(self, i: int) -> str:
        return f"#{int(i)}"

    def label_name(self, label: int) -> str:
        names = self.class_names
        return names[int(label)] if names and 0 <= int(label) < len(names) else str(int(label))

    def fingerprint(self) -> str:
        """SHA-256 identifying the content: here of the images and labels themselves."""
        import hashlib

        h = hashlib.sha256()
        for s in range(0, len(self), 4096):
            index = torch.arange(s, min(s + 4096, len(self)))
            h.update(self.get_images(index).contiguous().numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()

    def subset(self, index: torch.Tensor) -> ImageDataset:
        """The members at ``index [M]`` (in that order), without copying the images."""
        return IndexedSubset(self, index)


class IndexedSubset(ImageDataset):
    """A view of ``base`` restricted to ``index [M]``: member i is ``base``'s ``index[i]``."""

    def __init__(self, base: ImageDataset, index: torch.Tensor):
        index = torch.as_tensor(index, dtype=torch.long).cpu()
        if index.numel() and (index.min() < 0 or index.max() >= len(base)):
            raise AdvrankError(f"subset index out of range for a dataset of {len(base)} items")
        self.base, self.index = base, index
        self.labels = base.labels[index]
        self.image_shape = base.image_shape
        self.name = base.name
        self.class_names = base.class_names

    def __getitem__(self, i: int):
        return self.base[int(self.index[i])]

    def get_images(self, index: torch.Tensor) -> torch.Tensor:
        return self.base.get_images(self.index[index.cpu()])

    def item_name(self, i: int) -> str:
        return self.base.item_name(int(self.index[i]))

    def subset(self, index: torch.Tensor) -> ImageDataset:
        return IndexedSubset(self.base, self.index[torch.as_tensor(index, dtype=torch.long)])


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
        c, h, w = images.shape[1:]
        self.image_shape = (int(c), int(h), int(w))
        self.name = name

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]

    def get_images(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index.cpu()]

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()
