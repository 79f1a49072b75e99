"""What an id is: the catalog behind the search. Ids ``[0, |X|)`` are the gallery's members
(their collection's file name, label and picture); items inserted through ``POST /items``
take the next ids, never reused (their upload's file name, the picture as decoded); a
deleted id is gone for good (:class:`~advrank.serve.errors.NotFound`).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
import torch

from advrank.oracles.wire import ItemAnswer
from advrank.serve.errors import NotFound


def png_file(image: torch.Tensor) -> bytes:
    """``image [C, H, W]`` in [0, 1] (C = 1 or 3) as an 8-bit PNG file."""
    from PIL import Image

    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    array = pixels.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array[..., 0] if array.shape[-1] == 1 else array)
                    ).save(buf, "PNG")
    return buf.getvalue()


def base_name(name: str | None) -> str | None:
    """A file's base name (no folder of anyone's), or None for a name that is not a file's
    (a built-in dataset's ``#17``)."""
    if not name or name.startswith("#"):
        return None
    return PurePath(name.replace("\\", "/")).name[:200] or None


@dataclass(frozen=True)
class Added:
    """An item inserted through the service: its upload's file name and decoded picture."""

    name: str | None
    image: torch.Tensor


class Catalog:
    """The items of a gallery (``dataset`` for names and pictures, ``labels [N]``) and those
    added since; ``alive(i)`` says whether id i is held now."""

    def __init__(self, dataset, labels: torch.Tensor):
        self.dataset, self.labels = dataset, labels.detach().cpu()
        self.size = int(self.labels.numel())
        self.id_bound = self.size  # the next id: ids are never reused
        self.added: dict[int, Added] = {}
        self.deleted: set[int] = set()
        self.lock = threading.Lock()

    def alive(self, i: int) -> bool:
        return 0 <= i < self.id_bound and i not in self.deleted

    def _check(self, i: int) -> None:
        if not self.alive(i):
            raise NotFound(f"no item {i}" + (" (deleted)" if i in self.deleted else ""))

    def item(self, i: int) -> ItemAnswer:
        self._check(i)
        if i >= self.size:
            return ItemAnswer(id=i, name=self.added[i].name)
        label = int(self.labels[i])
        name = self.dataset.item_name(i) if hasattr(self.dataset, "item_name") else None
        class_name = self.dataset.label_name(label) if hasattr(self.dataset, "label_name") \
            else str(label)
        return ItemAnswer(id=i, name=base_name(name), label=label, class_name=class_name)

    def picture(self, i: int) -> torch.Tensor:
        """The item's picture ``[C, H, W]`` as the model reads it."""
        self._check(i)
        if i >= self.size:
            return self.added[i].image
        return self.dataset.get_images(torch.tensor([i]))[0]

    def thumbnail(self, i: int) -> bytes:
        return png_file(self.picture(i))

    def add(self, i: int, name: str | None, image: torch.Tensor) -> None:
        """Record the item inserted as id ``i`` (the next id)."""
        with self.lock:
            if i != self.id_bound:
                raise RuntimeError(f"id {i} is not the next one ({self.id_bound})")
            self.added[i] = Added(base_name(name), image.detach().cpu())
            self.id_bound += 1

    def remove(self, i: int) -> None:
        with self.lock:
            self._check(i)
            self.deleted.add(i)
            self.added.pop(i, None)
