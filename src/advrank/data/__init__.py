"""Datasets as [0, 1] float images with int64 labels, chosen by name from the registry.

``load_dataset(name, split, root)``; a name may carry an argument after a colon
(``imagefolder:PATH``). Each built-in dataset is one module that registers its loader in
:data:`advrank.registry.DATASETS` with ``image_shape``, ``mean`` and ``std`` (the
normalisation a model trained on it puts in its first layer). Datasets registered with
``takes_geometry=True`` (picture collections) read their images at the size a given
:class:`~advrank.data.geometry.Geometry` asks for (the model's input size).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from advrank.core.checks import check_flag, check_path
from advrank.data.base import ImageDataset, IndexedSubset, TensorImageDataset
from advrank.data.geometry import Geometry
from advrank.errors import AdvrankError
from advrank.registry import DATASETS

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """What the rest of the code needs to know about a dataset before loading it."""

    name: str
    image_shape: tuple[int, int, int] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


def default_data_root() -> Path:
    """``$ADVRANK_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("ADVRANK_DATA") or "data")


def split_name(name: str) -> tuple[str, str | None]:
    """``"imagefolder:/x"`` -> ``("imagefolder", "/x")``; ``"mnist"`` -> ``("mnist", None)``."""
    if not isinstance(name, str):
        raise AdvrankError(f"a dataset name must be a string, got {type(name).__name__}")
    base, sep, arg = name.partition(":")
    return base, (arg if sep else None)


def dataset_names() -> list[str]:
    return DATASETS.names()


def dataset_spec(name: str) -> DatasetSpec:
    base, _ = split_name(name)
    entry = DATASETS.entry(base)
    info = entry.info
    return DatasetSpec(entry.name, info.get("image_shape"), info.get("mean"), info.get("std"))


def check_dataset_name(name: str):
    """The registry entry of ``name`` (``base`` or ``base:argument``) and its argument; refuses
    unknown names and an argument where the dataset takes none (or none where it needs one)."""
    base, arg = split_name(name)
    entry = DATASETS.entry(base)
    takes_arg = entry.info.get("takes_argument", False)
    if takes_arg and not arg:
        raise AdvrankError(f"dataset {base!r} needs an argument: {base}:{takes_arg}")
    if arg is not None and not takes_arg:
        raise AdvrankError(f"dataset {base!r} takes no argument after ':' (got {name!r})")
    return entry, arg


def load_dataset(name: str, split: str = "test", root: str | Path | None = None,
                 download: bool = False, geometry: Geometry | None = None,
                 allow_outside_root: bool = False) -> ImageDataset:
    """Load ``split`` (``train`` or ``test``) of dataset ``name``.

    ``root`` defaults to ``$ADVRANK_DATA`` (then ``./data``). With ``download=True`` torchvision
    may fetch missing files; otherwise missing files raise an :class:`AdvrankError` that names them.
    ``geometry``: the input size pictures are read at, for datasets that take one (others keep
    their fixed image shape, which the caller checks against the model's).
    ``allow_outside_root``: listings (``imagefolder``, ``csv``) may read pictures whose real
    path leaves their root (otherwise those are skipped and counted).
    """
    if not isinstance(split, str) or split not in SPLITS:
        raise AdvrankError(f"unknown split {split!r}; use 'train' or 'test'")
    entry, arg = check_dataset_name(name)
    takes_arg = entry.info.get("takes_argument", False)
    root = check_path(root, "data root") if root is not None else default_data_root()
    check_flag(download, "download")
    kwargs = {"arg": arg} if takes_arg else {}
    if geometry is not None and entry.info.get("takes_geometry", False):
        kwargs["geometry"] = geometry
    check_flag(allow_outside_root, "allow_outside_root")
    if entry.info.get("listing", False):
        kwargs["allow_outside_root"] = allow_outside_root
    dataset = entry.obj(split=split, root=root, download=download, **kwargs)
    if len(dataset) < 2:
        raise AdvrankError(f"dataset {name!r} ({split}) has {len(dataset)} images; need at "
                           "least 2")
    return dataset


__all__ = ["DatasetSpec", "Geometry", "ImageDataset", "IndexedSubset",
           "TensorImageDataset", "check_dataset_name", "dataset_names", "dataset_spec",
           "default_data_root", "load_dataset", "split_name"]
