"""``cub``: Caltech-UCSD Birds-200-2011 (Wah et al. 2011) in its published layout, read lazily;
classes 1-100 train, 101-200 test (the deep-metric-learning split robrank uses)."""

from __future__ import annotations

from pathlib import Path

import torch

from advrank.data.benchmarks import class_split, find_base, with_geometry
from advrank.data.folders import DEFAULT_GEOMETRY, IMAGENET_MEAN, IMAGENET_STD, FolderDataset
from advrank.data.geometry import Geometry
from advrank.errors import AdvrankError
from advrank.registry import DATASETS

FILES = ("images.txt", "image_class_labels.txt")


def _read_pairs(path: Path) -> dict[int, str]:
    """``id value`` lines -> {id: value}; refuses any other line."""
    out = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise AdvrankError(f"{path}:{lineno}: expected 'id value', got {line.strip()!r}")
        out[int(parts[0])] = parts[1].strip()
    return out


def read_cub(base: Path, split: str) -> FolderDataset:
    """``base`` = the CUB_200_2011 folder (``images.txt``, ``image_class_labels.txt``,
    ``images/``) -> the split's pictures."""
    missing = [f for f in FILES if not (base / f).is_file()]
    if missing:
        raise AdvrankError(f"CUB-200-2011 files {', '.join(missing)} not found in "
                           f"{base.resolve()}/ ; unpack CUB_200_2011.tgz into the data root "
                           "(CUB_200_2011/images.txt, image_class_labels.txt, images/)")
    images, classes = _read_pairs(base / FILES[0]), _read_pairs(base / FILES[1])
    if set(images) != set(classes):
        raise AdvrankError(f"{base}: images.txt and image_class_labels.txt list different ids")
    order = sorted(images)
    try:
        ids = torch.tensor([int(classes[i]) for i in order], dtype=torch.long)
    except ValueError:
        raise AdvrankError(f"{base / FILES[1]}: class ids must be integers") from None
    names = None
    if (base / "classes.txt").is_file():
        table = _read_pairs(base / "classes.txt")
        names = [table.get(c, str(c)) for c in range(1, 201)]
    return class_split(base, [f"images/{images[i]}" for i in order], ids, split, 100, "cub",
                       names)


@DATASETS.register("cub", takes_geometry=True, image_shape=DEFAULT_GEOMETRY.input_size,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, default_eps=8 / 255)
def load_cub(split: str, root: Path, download: bool,
             geometry: Geometry | None = None) -> FolderDataset:
    """``root/CUB_200_2011`` (or ``root`` itself); it cannot be downloaded automatically."""
    return with_geometry(read_cub(find_base(root, "CUB_200_2011", FILES[0]), split), geometry)
