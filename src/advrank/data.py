"""Datasets as [0, 1] float images with int64 labels, chosen by name from a registry.

Every dataset object has ``labels`` (``LongTensor[N]``), ``image_shape`` (``(C, H, W)``) and
``get_images(index) -> FloatTensor[B, C, H, W]``, so the attack code can fetch gallery members by
index whatever the storage (a tensor in memory, or JPEG files on disk for SOP).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from advrank.errors import AdvrankError

DATA_ENV = "ADVRANK_DATA"


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the code needs to know about a dataset, before loading it."""

    name: str
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps_grid: tuple[float, ...]  # the paper's epsilon rows for this dataset (Tables 1-4)
    loader: Callable[..., ImageDataset] = field(repr=False, compare=False)


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name, image_shape, mean, std, eps_grid):
    """Decorator: register ``loader(split, root, download)`` under ``name``."""

    def wrap(loader):
        _DATASETS[name] = DatasetInfo(name, image_shape, mean, std, eps_grid, loader)
        return loader

    return wrap


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    try:
        return _DATASETS[name]
    except KeyError:
        raise AdvrankError(
            f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}"
        ) from None


def default_data_root() -> Path:
    """``$ADVRANK_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("ADVRANK_DATA", "data"))  # == DATA_ENV


def load_dataset(
    name: str, split: str = "test", root: str | Path | None = None, download: bool = False
) -> ImageDataset:
    """Load ``split`` (``train`` or ``test``) of dataset ``name``.

    ``root`` defaults to ``$ADVRANK_DATA`` (then ``./data``). With ``download=True`` torchvision
    may fetch missing files; otherwise missing files raise an :class:`AdvrankError` that names them.
    """
    if split not in ("train", "test"):
        raise AdvrankError(f"unknown split {split!r}; use 'train' or 'test'")
    info = dataset_info(name)
    root = Path(root) if root is not None else default_data_root()
    return info.loader(split=split, root=root, download=download)


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


class TensorImageDataset(ImageDataset):
    """Images held in memory as one ``FloatTensor[N, C, H, W]``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str = "tensor"):
        if images.dim() != 4:
            raise AdvrankError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
        if images.shape[0] != labels.shape[0]:
            raise AdvrankError(
                f"{images.shape[0]} images but {labels.shape[0]} labels; they must match"
            )
        self.images = images.float().contiguous()
        self.labels = labels.long().contiguous()
        self.image_shape = tuple(images.shape[1:])
        self.name = name

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]

    def get_images(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index.cpu()]


# --------------------------------------------------------------------------- digits (embedded)


@register_dataset("digits", (1, 8, 8), (0.3, ), (0.38, ), (0.0, 0.01, 0.03, 0.1, 0.3))
def _load_digits(split: str, root: Path, download: bool) -> TensorImageDataset:
    """scikit-learn's bundled 1,797 handwritten digits (8x8, values 0..16), fixed 60/40 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=0.4, random_state=0, stratify=labels.numpy()
    )
    idx = torch.as_tensor(idx_train if split == "train" else idx_test)
    return TensorImageDataset(images[idx], labels[idx], name="digits")


# --------------------------------------------------------------------------- MNIST-like

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _load_mnist_like(cls_name: str, folder: str, name: str, split: str, root: Path,
                     download: bool) -> TensorImageDataset:
    import torchvision.datasets as tvd

    raw = root / folder / "raw"
    wanted = _MNIST_FILES[split]
    missing = [f for f in wanted if not (raw / f).exists() and not (raw / f"{f}.gz").exists()]
    if missing and not download:
        raise AdvrankError(
            f"{name} {split} files are missing: put {', '.join(missing)} (uncompressed, as "
            f"published) into {raw.resolve()}/ , or pass --download when online. The data root "
            f"comes from --data-root or ${DATA_ENV} (now {root})."
        )
    try:
        ds = getattr(tvd, cls_name)(root=str(root), train=(split == "train"), download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found" / bad download
        raise AdvrankError(f"could not load {name} from {raw}: {exc}") from exc
    images = ds.data.unsqueeze(1).float().div_(255.0)
    return TensorImageDataset(images, ds.targets.long(), name=name)


@register_dataset("mnist", (1, 28, 28), (0.1307,), (0.3081,), (0.0, 0.01, 0.03, 0.1, 0.3))
def _load_mnist(split: str, root: Path, download: bool) -> TensorImageDataset:
    return _load_mnist_like("MNIST", "MNIST", "mnist", split, root, download)


@register_dataset("fashion", (1, 28, 28), (0.2860,), (0.3530,), (0.0, 0.01, 0.03, 0.1, 0.3))
def _load_fashion(split: str, root: Path, download: bool) -> TensorImageDataset:
    return _load_mnist_like("FashionMNIST", "FashionMNIST", "fashion", split, root, download)


# ------------------------------------------------------------------ Stanford Online Products


class SOPDataset(ImageDataset):
    """Stanford Online Products in its published layout, read lazily (120k JPEGs do not fit RAM).

    ``root`` holds ``Ebay_train.txt``/``Ebay_test.txt`` (columns ``image_id class_id
    super_class_id path``) and the image folders they name. Images become 3x224x224 in [0, 1].
    """

    def __init__(self, root: Path, split: str, train_transform: bool = False):
        import torchvision.transforms as T

        listing = root / ("Ebay_train.txt" if split == "train" else "Ebay_test.txt")
        if not listing.exists():
            raise AdvrankError(
                f"Stanford Online Products listing {listing.name} not found in {root.resolve()}/ ; "
                "unpack Stanford_Online_Products there (Ebay_train.txt, Ebay_test.txt and the "
                "*_final image folders). SOP cannot be downloaded automatically."
            )
        paths, labels = [], []
        with open(listing) as fh:
            header = fh.readline().split()
            if header[:2] != ["image_id", "class_id"]:
                raise AdvrankError(f"{listing} does not look like an SOP listing: {header}")
            for lineno, line in enumerate(fh, start=2):
                parts = line.split()
                if not parts:
                    continue
                try:
                    if len(parts) != 4:
                        raise ValueError
                    labels.append(int(parts[1]))
                except ValueError:
                    raise AdvrankError(
                        f"{listing}:{lineno}: expected 'image_id class_id super_class_id path', "
                        f"got {line.strip()!r}"
                    ) from None
                paths.append(root / parts[3])
        if not paths:
            raise AdvrankError(f"{listing} lists no images")
        self.paths = paths
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.image_shape = (3, 224, 224)
        self.name = "sop"
        if train_transform:
            self.transform = T.Compose(
                [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()]
            )
        else:
            self.transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])

    def __getitem__(self, i: int):
        from PIL import Image

        path = self.paths[i]
        try:
            with Image.open(path) as img:
                image = self.transform(img.convert("RGB"))
        except (OSError, FileNotFoundError) as exc:
            raise AdvrankError(f"cannot read SOP image {path}: {exc}") from exc
        return image, self.labels[i]


@register_dataset(
    "sop", (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (0.0, 0.01, 0.03, 0.06)
)
def _load_sop(split: str, root: Path, download: bool) -> SOPDataset:
    base = root / "Stanford_Online_Products"
    if not base.exists() and (root / "Ebay_test.txt").exists():
        base = root
    return SOPDataset(base, split, train_transform=(split == "train"))
