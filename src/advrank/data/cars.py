"""``cars``: Stanford Cars-196 (Krause et al. 2013) in its published layout (``cars_annos.mat``
and ``car_ims/``), read lazily; classes 1-98 train, 99-196 test (the deep-metric-learning
split robrank uses)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from advrank.data.benchmarks import class_split, find_base, with_geometry
from advrank.data.folders import DEFAULT_GEOMETRY, IMAGENET_MEAN, IMAGENET_STD, FolderDataset
from advrank.data.geometry import Geometry
from advrank.errors import AdvrankError
from advrank.registry import DATASETS

ANNOTATIONS = "cars_annos.mat"


def _strings(cells) -> list[str]:
    """A MATLAB cell/struct column of strings (any nesting loadmat gives) -> Python strings."""
    return [str(np.asarray(c).ravel()[0]) if np.asarray(c).size else "" for c in
            np.asarray(cells, dtype=object).ravel()]


def read_cars(base: Path, split: str) -> FolderDataset:
    """``base`` holding ``cars_annos.mat`` (struct array ``annotations`` with
    ``relative_im_path``, ``class`` (1-196), bbox fields and ``test``; cell ``class_names``) and
    ``car_ims/`` -> the split's pictures (the .mat's own ``test`` flag is not the retrieval
    split and is ignored)."""
    path = base / ANNOTATIONS
    if not path.is_file():
        raise AdvrankError(f"Cars-196 annotations {ANNOTATIONS} not found in {base.resolve()}/ ; "
                           f"put {ANNOTATIONS} and the unpacked car_ims/ folder (car_ims.tgz) "
                           "there")
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
        ann = mat["annotations"].ravel()
        paths = _strings(ann["relative_im_path"])
        ids = torch.tensor([int(np.asarray(c).ravel()[0]) for c in ann["class"]],
                           dtype=torch.long)
    except (KeyError, ValueError, IndexError, TypeError, OSError) as exc:
        raise AdvrankError(f"{path} does not look like Cars-196's annotations (struct "
                           f"'annotations' with relative_im_path and class): {exc}") from None
    names = _strings(mat["class_names"]) if "class_names" in mat else None
    return class_split(base, paths, ids, split, 98, "cars", names)


@DATASETS.register("cars", takes_geometry=True, image_shape=DEFAULT_GEOMETRY.input_size,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, default_eps=8 / 255)
def load_cars(split: str, root: Path, download: bool,
              geometry: Geometry | None = None) -> FolderDataset:
    """``root/cars196`` (or ``root`` itself); it cannot be downloaded automatically."""
    return with_geometry(read_cars(find_base(root, "cars196", ANNOTATIONS), split), geometry)
