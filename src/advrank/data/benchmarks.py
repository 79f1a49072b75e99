"""What the class-split retrieval benchmarks (CUB-200-2011, Cars-196) share: the first half of
the classes trains, the second half is the test collection (Song et al. 2016's protocol, which
robrank follows), pictures read lazily at the model's input size."""

from __future__ import annotations

from pathlib import Path

import torch

from advrank.data.folders import DEFAULT_GEOMETRY, FolderDataset, check_classes
from advrank.data.geometry import Geometry
from advrank.errors import AdvrankError


def find_base(root: Path, folder: str, marker: str) -> Path:
    """``root/folder`` if it holds ``marker``, else ``root`` itself if it does (the dataset
    unpacked straight into the data root), else ``root/folder`` (whose absence the caller
    reports)."""
    if not (root / folder / marker).exists() and (root / marker).exists():
        return root
    return root / folder


def class_split(base: Path, paths: list[str], class_ids: torch.Tensor, split: str,
                train_classes: int, name: str, class_names: list[str] | None = None
                ) -> FolderDataset:
    """Pictures ``paths [N]`` (relative to ``base``) with 1-based ``class_ids [N]`` -> the
    ``split`` collection: ids 1..train_classes train, the rest test. Labels are the 0-based
    position of the id among the split's classes; ``class_names`` (indexed by id - 1) name
    them, else the id does."""
    keep = class_ids <= train_classes if split == "train" else class_ids > train_classes
    ids = class_ids[keep]
    if ids.numel() == 0:
        raise AdvrankError(f"{name}: no {split} images (classes "
                           f"{'1' if split == 'train' else train_classes + 1}-"
                           f"{train_classes if split == 'train' else 2 * train_classes})")
    classes, labels = torch.unique(ids, sorted=True, return_inverse=True)
    names = [class_names[c - 1] if class_names else str(c) for c in classes.tolist()]
    kept = [p for p, k in zip(paths, keep.tolist(), strict=True) if k]
    check_classes(labels, names, f"{name} ({split})", kept)
    return FolderDataset(base, kept, labels, names, DEFAULT_GEOMETRY, name)


def with_geometry(dataset: FolderDataset, geometry: Geometry | None) -> FolderDataset:
    """The collection read at ``geometry`` (the model's input size) instead of 224x224."""
    if geometry is not None:
        dataset.geometry, dataset.image_shape = geometry, geometry.input_size
    return dataset
