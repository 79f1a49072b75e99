"""``mnist`` and ``fashion``: the original IDX files in torchvision's layout, plain or gzipped.

``ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (Fashion-MNIST under
``ROOT/FashionMNIST/raw``). The files are parsed and checked here (magic numbers, header
sizes, byte counts, matching image/label counts, label range), so a damaged file gets one
readable error instead of a traceback. ``download=True`` lets torchvision fetch them.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from advrank.data.base import TensorImageDataset
from advrank.errors import AdvrankError
from advrank.registry import DATASETS

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: Fashion-MNIST's labels 0-9 as its README names them
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: 0x0803 (3-D ubyte), 0x0801 (1-D ubyte)
MAX_IDX_BYTES = 2**32  # 80x the 60,000-image training file


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _wrong_size(path: Path, shape: tuple[int, ...], needed: int, held: str):
    raise AdvrankError(f"{path} holds {held} bytes but its header {shape} needs {needed}: the "
                       "file is truncated or damaged")


def read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``dims`` dimensions, every header field checked.

    Reads the header first and then exactly the bytes it declares (plus one, to notice
    trailing data), so a damaged header or a gzip bomb never makes it read more than that.
    """
    header = 4 + 4 * dims
    try:
        with _open(path) as fh:
            head = fh.read(header)
            if len(head) < header:
                raise AdvrankError(f"{path} is truncated: {len(head)} bytes, shorter than its "
                                   f"{header}-byte IDX header")
            found = int.from_bytes(head[:4], "big")
            if found != magic:
                kind = {IMAGES_MAGIC: "an image", LABELS_MAGIC: "a label"}.get(found,
                                                                               "not an IDX")
                raise AdvrankError(f"{path} has magic number {found}, expected {magic}: it is "
                                   f"{kind} file (damaged, or images and labels swapped?)")
            shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big")
                          for i in range(dims))
            size = math.prod(shape)  # Python ints: a damaged header cannot overflow it
            if size > MAX_IDX_BYTES:
                raise AdvrankError(f"{path} declares {shape} entries ({size} bytes), more than "
                                   "any MNIST-like file: the header is damaged")
            if path.suffix != ".gz" and path.stat().st_size != header + size:
                _wrong_size(path, shape, header + size, str(path.stat().st_size))
            data = fh.read(size + 1)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise AdvrankError(f"cannot read {path}: {exc}") from None
    if len(data) != size:
        _wrong_size(path, shape, header + size, f"more than {header + size}"
                    if len(data) > size else str(header + len(data)))
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _find(raw: Path, name: str) -> Path | None:
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _download(tv_class: str, root: Path) -> None:
    import torchvision.datasets as tvd

    for train in (True, False):
        try:
            getattr(tvd, tv_class)(root=str(root), train=train, download=True)
        except (RuntimeError, OSError) as exc:  # no network, bad mirror
            raise AdvrankError(f"could not download {tv_class}: {exc}") from None


def load_mnist_like(tv_class: str, name: str, split: str, root: Path,
                    download: bool) -> TensorImageDataset:
    raw = root / tv_class / "raw"
    names = FILES[split]
    paths = [_find(raw, f) for f in names]
    if any(p is None for p in paths) and download:
        _download(tv_class, root)
        paths = [_find(raw, f) for f in names]
    missing = [f for f, p in zip(names, paths, strict=True) if p is None]
    if missing:
        raise AdvrankError(
            f"{name} {split} files are missing: put {', '.join(missing)} (as published, plain "
            f"or .gz) into {raw.resolve()}/ , or pass --download when online. The data root "
            f"comes from --data-root or $ADVRANK_DATA (now {root})."
        )
    images = read_idx(paths[0], IMAGES_MAGIC, 3)
    labels = read_idx(paths[1], LABELS_MAGIC, 1)
    if images.shape[1:] != (28, 28):
        raise AdvrankError(f"{paths[0]} holds {images.shape[1]}x{images.shape[2]} images; "
                           f"{name} images are 28x28")
    if images.shape[0] != labels.shape[0]:
        raise AdvrankError(f"{paths[0]} holds {images.shape[0]} images but {paths[1]} "
                           f"{labels.shape[0]} labels; they must match")
    if labels.size and labels.max() > 9:
        raise AdvrankError(f"{paths[1]} has label {int(labels.max())}; {name} labels are 0-9")
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    return TensorImageDataset(x, torch.from_numpy(labels.astype(np.int64)), name=name)


@DATASETS.register("mnist", image_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,),
                   default_eps=0.3)
def load_mnist(split: str, root: Path, download: bool) -> TensorImageDataset:
    """MNIST (LeCun et al.): 60,000 / 10,000 handwritten digits."""
    return load_mnist_like("MNIST", "mnist", split, root, download)


@DATASETS.register("fashion", image_shape=(1, 28, 28), mean=(0.2860,), std=(0.3530,),
                   default_eps=0.3)
def load_fashion(split: str, root: Path, download: bool) -> TensorImageDataset:
    """Fashion-MNIST (Xiao et al.): 60,000 / 10,000 clothing images in 10 classes, named as
    its authors name them (the captions and text prompts of a dual encoder use the names)."""
    dataset = load_mnist_like("FashionMNIST", "fashion", split, root, download)
    dataset.class_names = list(FASHION_CLASSES)
    return dataset
