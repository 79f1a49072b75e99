"""Image collections on disk: ``imagefolder:PATH`` (one sub-folder per class, its name is the
label) and ``csv:FILE`` (a listing with columns ``path,label``; paths relative to the CSV's
folder or absolute). Pictures are read lazily with PIL and brought to the model's input size
by its :class:`~advrank.data.geometry.Geometry` when read, so a 100k-image collection never
sits in memory.

A collection has no train/test split: both splits are every listed image (the audit's
``--query-fraction`` draws a deterministic query/gallery split, :func:`split_queries`).
Every class needs at least two images (a query needs a relevant item to be retrieved).
Unreadable pictures are found when the collection is embedded
(:mod:`advrank.core.embedcache`), reported and left out.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from pathlib import Path

import torch

from advrank.data.base import ImageDataset
from advrank.data.geometry import Geometry
from advrank.errors import AdvrankError
from advrank.registry import DATASETS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm")
DEFAULT_GEOMETRY = Geometry((3, 224, 224), 0.875, "bilinear")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FolderDataset(ImageDataset):
    """Pictures listed as ``paths [N]`` (relative to ``root``) with labels ``[N]`` indexing
    ``class_names``, read with ``geometry`` into ``[C, H, W]`` in [0, 1]."""

    def __init__(self, root: Path, paths: list[str], labels: torch.Tensor,
                 class_names: list[str], geometry: Geometry, name: str):
        self.root, self.paths, self.geometry = Path(root), list(paths), geometry
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.class_names = list(class_names)
        self.image_shape = geometry.input_size
        self.name = name

    def path(self, i: int) -> Path:
        return self.root / self.paths[int(i)]

    def try_load(self, i: int) -> tuple[torch.Tensor | None, str | None]:
        """``(image [C, H, W], None)`` or ``(None, why it cannot be read)``; never raises for a
        bad picture (the embedding skips those and the report counts them)."""
        try:
            return self.geometry.load(self.path(i)), None
        except Exception as exc:  # PIL raises many types for damaged files; all mean "skip"
            text = str(exc).strip().splitlines()
            return None, f"{type(exc).__name__}: {text[0][:160] if text else ''}"

    def __getitem__(self, i: int):
        image, error = self.try_load(i)
        if image is None:
            raise AdvrankError(f"cannot read image {self.path(i)}: {error}")
        return image, self.labels[i]

    def get_images(self, index: torch.Tensor) -> torch.Tensor:
        return torch.stack([self[int(i)][0] for i in index.tolist()])

    def item_name(self, i: int) -> str:
        return self.paths[int(i)]

    def fingerprint(self) -> str:
        """SHA-256 of the listing: relative path, byte size, modification time (ns) and label of
        every picture, and the class names; a changed, added or removed file changes it."""
        h = hashlib.sha256("\n".join(self.class_names).encode())
        for rel, label in zip(self.paths, self.labels.tolist(), strict=True):
            try:
                st = os.stat(self.root / rel)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, -1
            h.update(f"\n{rel}\t{size}\t{mtime}\t{label}".encode())
        return h.hexdigest()

    def subset(self, index: torch.Tensor) -> FolderDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        return FolderDataset(self.root, [self.paths[i] for i in index.tolist()],
                             self.labels[index], self.class_names, self.geometry, self.name)


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def check_classes(labels: torch.Tensor, class_names: list[str], where: str,
                  names: list[str] | None = None) -> None:
    """Refuse an empty collection, or a class of a single image (a query of that class would
    have nothing relevant to retrieve); ``names [N]`` name the members in the message."""
    if labels.numel() == 0:
        raise AdvrankError(f"{where} holds no images (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    counts = Counter(labels.tolist())
    lonely = [c for c, n in sorted(counts.items()) if n < 2]
    if lonely:
        c = lonely[0]
        example = ""
        if names is not None:
            example = f" ({names[labels.tolist().index(c)]})"
        more = f"; {len(lonely)} classes are like that" if len(lonely) > 1 else ""
        raise AdvrankError(f"{where}: class {class_names[c]!r} has only one image{example}; "
                           "every class needs at least 2 for retrieval (add images or remove "
                           f"the class){more}")


def scan_image_folder(root: Path) -> tuple[list[str], list[int], list[str]]:
    """``root/CLASS/**/picture`` -> relative paths, label indices, sorted class names."""
    if not root.exists():
        raise AdvrankError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise AdvrankError(f"image folder {root} is not a folder (for a listing use csv:FILE)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for label, cls in enumerate(classes):
        for dirpath, dirnames, files in os.walk(root / cls, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = Path(dirpath).relative_to(root)
            for f in sorted(files):
                if is_image(f):
                    paths.append(str(rel_dir / f))
                    labels.append(label)
    if not paths:
        loose = [f for f in os.listdir(root) if is_image(f)]
        hint = (f"; it holds {len(loose)} pictures but no class sub-folders (put each class in "
                "its own sub-folder, or list path,label in a CSV and use csv:FILE)"
                if loose else "")
        raise AdvrankError(f"image folder {root} holds no images in class sub-folders{hint}")
    return paths, labels, classes


def read_csv_listing(path: Path) -> tuple[list[str], list[int], list[str]]:
    """A CSV with a header naming columns ``path`` and ``label`` (others ignored) -> paths
    relative to the CSV's folder (or absolute), label indices, sorted class names."""
    if not path.is_file():
        raise AdvrankError(f"CSV listing {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AdvrankError(f"cannot read CSV listing {path}: {exc}") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "path" not in header or "label" not in header:
        raise AdvrankError(f"{path}: the first line must name the columns, with 'path' and "
                           f"'label' among them (got {rows[0] if rows else 'an empty file'})")
    ip, il = header.index("path"), header.index("label")
    entries = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(ip, il) or not row[ip].strip() or not row[il].strip():
            raise AdvrankError(f"{path}:{lineno}: expected a path and a label, got {row}")
        entries.append((row[ip].strip(), row[il].strip()))
    classes = sorted({label for _, label in entries})
    index = {c: i for i, c in enumerate(classes)}
    return [p for p, _ in entries], [index[label] for _, label in entries], classes


def _make(kind: str, arg: str, geometry: Geometry | None) -> FolderDataset:
    source = Path(arg).expanduser()
    if kind == "imagefolder":
        root = source
        paths, labels, classes = scan_image_folder(source)
    else:
        root = source.parent
        paths, labels, classes = read_csv_listing(source)
    labels_t = torch.tensor(labels, dtype=torch.long)
    check_classes(labels_t, classes, f"{kind}:{arg}", paths)
    return FolderDataset(root, paths, labels_t, classes, geometry or DEFAULT_GEOMETRY,
                         f"{kind}:{arg}")


@DATASETS.register("imagefolder", takes_argument="PATH", takes_geometry=True,
                   image_shape=DEFAULT_GEOMETRY.input_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   default_eps=8 / 255)
def load_image_folder(split: str, root: Path, download: bool, arg: str,
                      geometry: Geometry | None = None) -> FolderDataset:
    """``imagefolder:PATH``: PATH/CLASS/picture; both splits are the whole collection."""
    return _make("imagefolder", arg, geometry)


@DATASETS.register("csv", takes_argument="FILE", takes_geometry=True,
                   image_shape=DEFAULT_GEOMETRY.input_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   default_eps=8 / 255)
def load_csv_listing(split: str, root: Path, download: bool, arg: str,
                     geometry: Geometry | None = None) -> FolderDataset:
    """``csv:FILE``: a ``path,label`` listing of pictures (e.g. one flat folder)."""
    return _make("csv", arg, geometry)


def split_queries(dataset: ImageDataset, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic, stratified query/gallery split: ``(query index [Q], gallery index
    [N - Q])``.

    Within each class the members are ordered by the SHA-1 of their name (a file's relative
    path), and the first ``round(fraction * n)`` (at most n - 1, so every class keeps a gallery
    member) become queries. The split depends only on the names, not on the listing order or
    the machine, and adding a file moves no other file across it.
    """
    if not 0.0 < fraction < 1.0:
        raise AdvrankError(f"the query fraction must lie strictly between 0 and 1, got {fraction}")
    labels = dataset.labels.tolist()
    keys = [hashlib.sha1(dataset.item_name(i).encode()).hexdigest() for i in range(len(labels))]
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    queries: list[int] = []
    for members in by_class.values():
        members.sort(key=lambda i: keys[i])
        queries += members[: min(round(fraction * len(members)), len(members) - 1)]
    if not queries:
        raise AdvrankError(f"a query fraction of {fraction} leaves no query in any class; raise "
                           "it")
    is_query = torch.zeros(len(labels), dtype=torch.bool)
    is_query[torch.tensor(queries)] = True
    return is_query.nonzero().flatten(), (~is_query).nonzero().flatten()
