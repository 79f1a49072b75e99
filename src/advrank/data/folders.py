"""Image collections on disk: ``imagefolder:PATH`` (one sub-folder per class, its name is the
label) and ``csv:FILE`` (a listing with columns ``path,label``; paths relative to the CSV's
folder or absolute). Pictures are read lazily with PIL and brought to the model's input size
by its :class:`~advrank.data.geometry.Geometry` when read, so a 100k-image collection never
sits in memory.

A collection has no train/test split: both splits are every listed image (the audit's
``--query-fraction`` draws a deterministic query/gallery split, :func:`split_queries`).
Every class needs at least two images (a query needs a relevant item to be retrieved) and
there must be at least two classes (with one, every result is relevant and retrieval is
perfect whatever the model does). Unreadable pictures are found when the collection is
embedded (:mod:`advrank.core.embedcache`), reported and left out.

**A collection is a set of distinct pictures inside its root** (the image folder, or the CSV
listing's folder). Every listed path is resolved to its real path: a picture reached twice
(a duplicate CSV row, a symbolic link to another member, a folder reached again through a
link loop) is listed once, under the class folder it really lies in; anything that is not
a plain file (a FIFO, a device) and anything whose real path leaves the root is skipped
unless ``allow_outside_root``. What was skipped is counted (:attr:`FolderDataset.skipped`),
logged and recorded with the results. A picture listed under two different labels is an
error. Each picture's bytes are hashed while they are read (:meth:`FolderDataset.read`), so
results identify the content of the collection, not just its file names.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import stat
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
                 class_names: list[str], geometry: Geometry, name: str,
                 skipped: dict[str, int] | None = None):
        self.root, self.paths, self.geometry = Path(root), list(paths), geometry
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.class_names = list(class_names)
        self.image_shape = geometry.input_size
        self.name = name
        #: what the listing left out, by reason (duplicates, loops, special files...)
        self.skipped = dict(skipped or {})

    def path(self, i: int) -> Path:
        return self.root / self.paths[int(i)]

    def read(self, i: int) -> tuple[torch.Tensor | None, str | None, str | None]:
        """``(image [C, H, W], None, SHA-256 of the file's bytes)`` or ``(None, why it cannot
        be read, None)``; never raises for a bad picture (the embedding skips those and the
        report counts them). The file is opened without blocking and must be a plain file,
        so a FIFO put in place of a picture cannot hang the run."""
        try:
            fd = os.open(self.path(i), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    return None, "not a plain file", None
                data = fh.read()
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                image = self.geometry.read(img)
            return image, None, hashlib.sha256(data).hexdigest()
        except Exception as exc:  # PIL raises many types for damaged files; all mean "skip"
            text = str(exc).strip().splitlines()
            return None, f"{type(exc).__name__}: {text[0][:160] if text else ''}", None

    def try_load(self, i: int) -> tuple[torch.Tensor | None, str | None]:
        """``(image [C, H, W], None)`` or ``(None, why it cannot be read)`` (see :meth:`read`)."""
        image, error, _ = self.read(i)
        return image, error

    def __getitem__(self, i: int):
        image, error = self.try_load(i)
        if image is None:
            raise AdvrankError(f"cannot read image {self.path(i)}: {error}")
        return image, self.labels[i]

    def get_images(self, index: torch.Tensor) -> torch.Tensor:
        return torch.stack([self[int(i)][0] for i in index.tolist()])

    def item_name(self, i: int) -> str:
        """The listed path; bytes that are not UTF-8 (a file name from another system) are
        shown as U+FFFD so that reports and JSON can always be written."""
        return printable(self.paths[int(i)])

    def fingerprint(self) -> str:
        """SHA-256 of the listing: relative path, byte size, modification and change times (ns),
        inode and label of every picture, and the class names; a changed, added or removed
        file changes it (cheap: no file is read; the content hashes come from :meth:`read`)."""
        h = hashlib.sha256("\n".join(map(printable, self.class_names)).encode())
        for rel, label in zip(self.paths, self.labels.tolist(), strict=True):
            try:
                st = os.stat(self.root / rel)
                # ctime too: rewriting a file and restoring its size and mtime (os.utime)
                # still moves its ctime, so an edited picture never passes for the old one
                size, mtime, ctime, ino = st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
            except OSError:
                size = mtime = ctime = ino = -1
            h.update(os.fsencode(rel) + f"\t{size}\t{mtime}\t{ctime}\t{ino}\t{label}\n".encode())
        return h.hexdigest()

    def subset(self, index: torch.Tensor) -> FolderDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        return FolderDataset(self.root, [self.paths[i] for i in index.tolist()],
                             self.labels[index], self.class_names, self.geometry, self.name,
                             self.skipped)


def printable(name: str) -> str:
    """``name`` with undecodable bytes (surrogate escapes) replaced by U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def check_classes(labels: torch.Tensor, class_names: list[str], where: str,
                  names: list[str] | None = None) -> None:
    """Refuse a collection that cannot measure retrieval: no images, a single class (every
    result would be relevant: perfect figures whatever the model), or a class of a single
    image (its query would have nothing relevant to retrieve); ``names [N]`` name the
    members in the message."""
    if labels.numel() == 0:
        raise AdvrankError(f"{where} holds no images (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    counts = Counter(labels.tolist())
    if len(counts) < 2:
        only = printable(class_names[next(iter(counts))])
        raise AdvrankError(f"{where} has a single class ({only!r}, {labels.numel()} images); "
                           "retrieval needs at least 2 classes (with one, every result is "
                           "relevant and every figure would be perfect)")
    lonely = [c for c, n in sorted(counts.items()) if n < 2]
    if lonely:
        c = lonely[0]
        example = ""
        if names is not None:
            example = f" ({printable(names[labels.tolist().index(c)])})"
        more = f"; {len(lonely)} classes are like that" if len(lonely) > 1 else ""
        raise AdvrankError(f"{where}: class {printable(class_names[c])!r} has only one image"
                           f"{example}; every class needs at least 2 for retrieval (add images "
                           f"or remove the class){more}")


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


class Members:
    """The distinct pictures of a collection rooted at ``root`` (see the module docstring):
    :meth:`add` each listed file; ``paths``, ``labels`` and ``skipped`` (reason -> count)."""

    def __init__(self, root: Path, allow_outside_root: bool, where: str,
                 class_names: list[str]):
        self.root_real = os.path.realpath(root)
        self.allow, self.where, self.class_names = allow_outside_root, where, class_names
        self.seen: dict[str, tuple[int, str]] = {}  # real path -> (label, listed path)
        self.paths: list[str] = []
        self.labels: list[int] = []
        self.skipped: Counter = Counter()

    def admits(self, real: str) -> bool:
        """Whether a real path may be read (inside the root, or outside allowed)."""
        if self.allow or _inside(real, self.root_real):
            return True
        self.skipped["outside the root"] += 1
        return False

    def add(self, listed: str, full: str, label: int, real: str | None = None,
            mode: int | None = None) -> None:
        """List ``full`` (shown as ``listed``; ``real``, ``mode``: its real path and
        ``st_mode`` when the caller knows them) under ``label`` unless it is a special file,
        outside the root or a picture already listed; a missing file stays listed (it is
        reported as unreadable when embedded)."""
        real = real or os.path.realpath(full)
        if mode is None:
            try:
                mode = os.stat(full).st_mode
            except OSError:
                mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            self.skipped["special files"] += 1
            return
        if not self.admits(real):
            return
        if real in self.seen:
            first_label, first = self.seen[real]
            if first_label != label:
                raise AdvrankError(
                    f"{self.where}: {printable(listed)} and {printable(first)} are the same "
                    f"picture under two labels ({printable(self.class_names[first_label])!r} "
                    f"and {printable(self.class_names[label])!r}); list it once")
            self.skipped["duplicates"] += 1
            return
        self.seen[real] = (label, listed)
        self.paths.append(listed)
        self.labels.append(label)


def _class_of(real: str, homes: dict[str, int]) -> int | None:
    """The class whose (real) folder holds ``real`` (the deepest one), or None: a lookup per
    parent folder, so listing stays linear in the number of files whatever the classes."""
    path = real
    while True:
        if path in homes:
            return homes[path]
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def _walk_class(root: Path, cls: str, label: int, homes: dict[str, int], visited: set[str],
                members: Members) -> None:
    """List the pictures under ``root/cls``, following links but visiting every real folder
    once (a link loop, or a link to another class's folder, adds nothing)."""
    for dirpath, dirnames, files in os.walk(root / cls, followlinks=True):
        keep, real_dir = [], os.path.realpath(dirpath)
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in visited or _inside(real_dir, real):
                members.skipped["folders reached again (link loops)"] += 1
            elif _class_of(real, homes) not in (None, label):
                members.skipped["links into another class"] += 1
            elif members.admits(real):
                visited.add(real)
                keep.append(d)
        dirnames[:] = keep
        rel_dir = str(Path(dirpath).relative_to(root))
        dir_class = _class_of(real_dir, homes)
        for f in sorted(files):
            if not is_image(f):
                continue
            full = os.path.join(dirpath, f)
            try:
                mode = os.lstat(full).st_mode
            except OSError:
                continue  # gone since the folder was listed
            real, of = os.path.join(real_dir, f), dir_class
            if stat.S_ISLNK(mode):  # only a link needs resolving (and stat-ing through)
                real, mode = os.path.realpath(full), None
                of = _class_of(real, homes)
            if of not in (None, label):
                members.skipped["links into another class"] += 1
                continue
            members.add(os.path.join(rel_dir, f), full, label, real, mode)


def scan_image_folder(root: Path, allow_outside_root: bool = False
                      ) -> tuple[list[str], list[int], list[str], dict[str, int]]:
    """``root/CLASS/**/picture`` -> relative paths, label indices, sorted class names and what
    was skipped (reason -> count)."""
    if not root.exists():
        raise AdvrankError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise AdvrankError(f"image folder {root} is not a folder (for a listing use csv:FILE)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    members = Members(root, allow_outside_root, f"imagefolder:{root}", classes)
    homes: dict[str, int] = {}
    for i, c in enumerate(classes):  # a class folder linked to another is that one's alias
        homes.setdefault(os.path.realpath(root / c), i)
    visited: set[str] = set()
    for label, cls in enumerate(classes):
        real = os.path.realpath(root / cls)
        if real in visited:
            members.skipped["folders reached again (link loops)"] += 1
        elif members.admits(real):
            visited.add(real)
            _walk_class(root, cls, label, homes, visited, members)
    if not members.paths:
        loose = [f for f in os.listdir(root) if is_image(f)]
        hint = (f"; it holds {len(loose)} pictures but no class sub-folders (put each class in "
                "its own sub-folder, or list path,label in a CSV and use csv:FILE)"
                if loose else "")
        raise AdvrankError(f"image folder {root} holds no images in class sub-folders{hint}")
    return members.paths, members.labels, classes, dict(members.skipped)


def read_csv_listing(path: Path, allow_outside_root: bool = False
                     ) -> tuple[list[str], list[int], list[str], dict[str, int]]:
    """A CSV with a header naming columns ``path`` and ``label`` (others ignored) -> paths
    relative to the CSV's folder (or absolute), label indices, sorted class names and what
    was skipped (reason -> count)."""
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
    members = Members(path.parent, allow_outside_root, f"csv:{path}", classes)
    for listed, label in entries:
        members.add(listed, os.path.join(path.parent, listed), index[label])
    return members.paths, members.labels, classes, dict(members.skipped)


def _make(kind: str, arg: str, geometry: Geometry | None,
          allow_outside_root: bool = False) -> FolderDataset:
    source = Path(arg).expanduser()
    if kind == "imagefolder":
        root = source
        paths, labels, classes, skipped = scan_image_folder(source, allow_outside_root)
    else:
        root = source.parent
        paths, labels, classes, skipped = read_csv_listing(source, allow_outside_root)
    labels_t = torch.tensor(labels, dtype=torch.long)
    check_classes(labels_t, classes, f"{kind}:{arg}", paths)
    return FolderDataset(root, paths, labels_t, classes, geometry or DEFAULT_GEOMETRY,
                         f"{kind}:{arg}", skipped)


#: what the registry knows of both kinds of picture collection: pictures resized to the
#: model's input, ImageNet normalisation for a new model, audited at 8/255 by default
_COLLECTION_INFO: dict[str, Any] = {"takes_geometry": True, "listing": True,
                    "image_shape": DEFAULT_GEOMETRY.input_size, "mean": IMAGENET_MEAN,
                    "std": IMAGENET_STD, "default_eps": 8 / 255}


def _collection_loader(kind: str, doc: str) -> Callable[..., FolderDataset]:
    """The dataset loader of ``KIND:ARG`` (``imagefolder`` or ``csv``); both splits are the
    whole collection."""
    def load(split: str, root: Path, download: bool, arg: str, geometry: Geometry | None = None,
             allow_outside_root: bool = False) -> FolderDataset:
        return _make(kind, arg, geometry, allow_outside_root)

    load.__name__, load.__doc__ = f"load_{kind}", doc
    return load


load_image_folder = DATASETS.register(
    "imagefolder", _collection_loader("imagefolder", "``imagefolder:PATH``: PATH/CLASS/picture"),
    takes_argument="PATH", **_COLLECTION_INFO)
load_csv_listing = DATASETS.register(
    "csv", _collection_loader("csv", "``csv:FILE``: a ``path,label`` listing of pictures (e.g. "
                                     "one flat folder)"),
    takes_argument="FILE", **_COLLECTION_INFO)


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
