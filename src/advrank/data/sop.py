"""``sop``: Stanford Online Products (Song et al. 2016) in its published layout, read lazily."""

from __future__ import annotations

from pathlib import Path

import torch

from advrank.data.base import ImageDataset
from advrank.errors import AdvrankError
from advrank.registry import DATASETS


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


@DATASETS.register("sop", image_shape=(3, 224, 224), mean=(0.485, 0.456, 0.406),
                   std=(0.229, 0.224, 0.225), default_eps=0.06)
def load_sop(split: str, root: Path, download: bool) -> SOPDataset:
    base = root / "Stanford_Online_Products"
    if not base.exists() and (root / "Ebay_test.txt").exists():
        base = root
    return SOPDataset(base, split, train_transform=(split == "train"))
