"""Embedding a picture collection once: in batches with a progress bar, unreadable pictures
skipped and reported, and the result cached on disk for the next run.

**Cache.** ``CACHE_DIR/gallery-<digest>.safetensors`` (safetensors: no code in the file) holds
the embeddings ``[M, D]``, the indices of the readable members ``[M]``, the SHA-256 of each
one's file content ``[M, 32]`` (hashed while it was read) and the list of unreadable ones.
The digest is the SHA-256 of the key: the model's code and weights, its preprocessing, and
the collection's listing (path, size, modification and change times, inode and label of
every file). Any change gives another digest, so a stale cache is never picked up; a file
whose recorded key differs from its name is refused, and so is one whose content does not
match the checksum stored with it (overwritten bytes). A long embedding writes a part file
every ``shard_size`` pictures and resumes from them.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from advrank.core.checks import check_finite
from advrank.core.gallery import embed_dataset
from advrank.core.io import atomic_write_bytes, strict_json
from advrank.errors import AdvrankError

CACHE_FORMAT = "advrank-gallery-cache"
CACHE_VERSION = "2"


@dataclass
class Embedded:
    """A collection's embeddings ``[M, D]`` (on the model's device), the dataset indices of the
    readable members ``keep [M]``, the unreadable ones (``{"item", "error"}``), how the
    cache was used (``{"file", "reused"}``; empty without a cache) and the SHA-256 of each
    kept member's file ``content [M, 32]`` (uint8; None for in-memory datasets)."""

    embeddings: torch.Tensor
    keep: torch.Tensor
    unreadable: list[dict[str, str]] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)
    content: torch.Tensor | None = None

    def content_sha(self) -> str | None:
        """One SHA-256 over the kept members' content hashes, in order (None without)."""
        if self.content is None:
            return None
        return hashlib.sha256(self.content.contiguous().numpy().tobytes()).hexdigest()


class _Decoded(Dataset):
    """``(index, image or None, error or None, content SHA-256 or None)`` per member of a
    lazily read collection."""

    def __init__(self, dataset, indices: range):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        if hasattr(self.dataset, "read"):
            return (i, *self.dataset.read(i))
        image, error = self.dataset.try_load(i)
        return i, image, error, None


def _collate(items):
    ok = [(i, img, sha) for i, img, _, sha in items if img is not None]
    bad = [(i, err) for i, img, err, _ in items if img is None]
    images = torch.stack([img for _, img, _ in ok]) if ok else None
    content = torch.tensor([list(bytes.fromhex(sha or "00" * 32)) for _, _, sha in ok],
                           dtype=torch.uint8).reshape(len(ok), 32)
    return torch.tensor([i for i, _, _ in ok], dtype=torch.long), images, bad, content


@torch.no_grad()
def _embed_range(model: nn.Module, dataset, indices: range, device: torch.device,
                 batch_size: int, workers: int, bar) -> tuple[list, list, list, list]:
    loader = DataLoader(_Decoded(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate)
    embs: list[torch.Tensor] = []
    keeps: list[torch.Tensor] = []
    contents: list[torch.Tensor] = []
    bad: list = []
    for index, images, failed, content in loader:
        if images is not None:
            embs.append(model(images.to(device)).float().cpu())
            keeps.append(index)
            contents.append(content)
        bad += [{"item": dataset.item_name(i), "error": err} for i, err in failed]
        if bar is not None:
            bar.update(len(index) + len(failed))
    return embs, keeps, bad, contents


def cache_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(strict_json(key).encode()).hexdigest()


def _checksum(tensors: dict[str, torch.Tensor], bad: list) -> str:
    """SHA-256 of a cache file's content: every tensor (name, dtype, shape, bytes) and the
    unreadable list."""
    h = hashlib.sha256(strict_json(bad).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"|{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _save(path: Path, emb: torch.Tensor, keep: torch.Tensor, content: torch.Tensor, bad: list,
          key: dict) -> None:
    from safetensors.torch import save

    tensors = {"embeddings": emb.contiguous(), "keep": keep.contiguous(),
               "content": content.contiguous()}
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "digest": cache_digest(key),
            "key": strict_json(key), "unreadable": strict_json(bad),
            "checksum": _checksum(tensors, bad)}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def _load(path: Path, key: dict, n: int) -> tuple[torch.Tensor, torch.Tensor, list,
                                                  torch.Tensor]:
    """Read a cache or part file, refusing one that was not made for ``key`` or whose
    content does not match its checksum."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in ("embeddings", "keep", "content")}
        bad = json.loads(meta.get("unreadable", "[]"))
        emb, keep, content = tensors["embeddings"], tensors["keep"], tensors["content"]
    except Exception as exc:  # a truncated or foreign file
        raise AdvrankError(f"gallery cache {path} is unreadable ({type(exc).__name__}: {exc}); "
                           "remove it to embed again") from None
    if meta.get("format") != CACHE_FORMAT or meta.get("digest") != cache_digest(key) or \
            meta.get("key") != strict_json(key):
        raise AdvrankError(f"gallery cache {path} was made for another model, data or transform "
                           "than its name says (renamed or edited?); remove it to embed again")
    if meta.get("checksum") != _checksum(tensors, bad) or emb.dim() != 2 or \
            keep.shape != (emb.shape[0],) or content.shape != (emb.shape[0], 32) or \
            (keep.numel() and (keep.min() < 0 or keep.max() >= n)) or \
            not torch.isfinite(emb).all():
        raise AdvrankError(f"gallery cache {path} is damaged (its content does not match its "
                           "checksum); remove it to embed again")
    return emb, keep.long(), bad, content


def _part(final: Path, i: int) -> Path:
    """Shard i's part file beside the final cache file."""
    return final.with_suffix(f".part{i:05d}.safetensors")


def _shard(model, dataset, indices: range, device, batch_size: int, workers: int, bar,
           part: Path | None, key) -> tuple[torch.Tensor, torch.Tensor, list, torch.Tensor]:
    """One shard's ``(embeddings [M, D], kept indices [M], unreadable, content [M, 32])``:
    read from its part file when an interrupted run finished it, else embedded (and its
    part file written)."""
    if part is not None and part.is_file():
        e, k, b, c = _load(part, key, len(dataset))
        if bar is not None:
            bar.update(len(indices))
        return e, k, b, c
    es, ks, b, cs = _embed_range(model, dataset, indices, device, batch_size, workers, bar)
    e = torch.cat(es) if es else torch.zeros(0, 0)
    k = torch.cat(ks) if ks else torch.zeros(0, dtype=torch.long)
    c = torch.cat(cs) if cs else torch.zeros(0, 32, dtype=torch.uint8)
    if part is not None:
        _save(part, e, k, c, b, key)
    return e, k, b, c


def embed_collection(
    model: nn.Module, dataset, device: torch.device, key: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None, batch_size: int = 64, workers: int = 0,
    shard_size: int = 8192, progress: bool = False,
    log: Callable[[str], None] = lambda msg: None,
) -> Embedded:
    """Embed every readable member of ``dataset`` with ``model`` (eval mode, no gradients).

    Datasets read lazily (with ``try_load``, e.g. image folders) skip pictures that do not
    decode; in-memory datasets are embedded directly. With ``cache_dir`` and ``key`` (what
    identifies model, transform and data; see the module docstring) the result is read from
    or written to the cache.
    """
    model.eval()
    n = len(dataset)
    if not hasattr(dataset, "try_load"):
        emb = embed_dataset(model, dataset, device, progress=progress)
        return Embedded(emb, torch.arange(n))
    final = None
    if cache_dir is not None and key is not None:
        final = Path(cache_dir) / f"gallery-{cache_digest(key)[:24]}.safetensors"
        if final.is_file():
            emb, keep, bad, content = _load(final, key, n)
            log(f"gallery embeddings read from cache {final}")
            return Embedded(emb.to(device), keep, bad, {"file": str(final), "reused": True},
                            content)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="embed gallery", file=sys.stderr, leave=False, unit="img")
    embs: list[torch.Tensor] = []
    keeps: list[torch.Tensor] = []
    contents: list[torch.Tensor] = []
    bad = []
    for s in range(0, n, shard_size):
        part = _part(final, s // shard_size) if final is not None and n > shard_size else None
        e, k, b, c = _shard(model, dataset, range(s, min(s + shard_size, n)), device,
                            batch_size, workers, bar, part, key)
        embs, keeps, bad, contents = embs + [e], keeps + [k], bad + b, contents + [c]
    if bar is not None:
        bar.close()
    non_empty = [e for e in embs if e.numel()]
    if not non_empty:
        raise AdvrankError(f"none of the {n} images of {dataset.name} could be read (e.g. "
                           f"{bad[0]['item']}: {bad[0]['error']})")
    emb = check_finite(torch.cat(non_empty), "the gallery embeddings")
    keep, content = torch.cat(keeps), torch.cat(contents)
    info: dict[str, Any] = {}
    if final is not None:
        _save(final, emb, keep, content, bad, key)
        for i in range(0, (n + shard_size - 1) // shard_size):
            _part(final, i).unlink(missing_ok=True)
        info = {"file": str(final), "reused": False}
    return Embedded(emb.to(device), keep, bad, info, content)
