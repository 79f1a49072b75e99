"""A built FAISS index saved and read back: ``index-<digest>.safetensors`` beside the gallery's
embedding cache, the serialized index as bytes (no code) with its key (what it was made
from) and its checksum (SHA-256 of the serialized index: its vectors, ids and structure).
Read back only when the key, the checksum, the sizes and the metric match and, where the
index stores its vectors exactly (flat storage), the vectors are the gallery's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from advrank.core.faiss_tools import as_faiss, faiss_metric, faiss_module
from advrank.core.io import atomic_write_bytes, strict_json

INDEX_FORMAT = "advrank-index"
INDEX_VERSION = "2"  # 2: the file carries its checksum


def index_key(embeddings: torch.Tensor, metric: str, spec: str,
              fingerprint: str | None) -> dict:
    """What a saved index must have been made from (embeddings, metric, spec, gallery,
    FAISS version)."""
    faiss = faiss_module()
    data = embeddings.detach().float().cpu().contiguous().numpy().tobytes()
    return {"index": 1, "embeddings_sha": hashlib.sha256(data).hexdigest(), "metric": metric,
            "spec": spec, "n": int(embeddings.shape[0]), "dim": int(embeddings.shape[1]),
            "gallery": fingerprint, "faiss": faiss.__version__}


def stores_exactly(index, x) -> bool:
    """Whether ``index`` gives its vectors back exactly (flat storage: Flat, HNSW32,
    IVF,Flat), so that a saved copy can be checked vector by vector."""
    try:
        return bool((index.reconstruct_n(0, index.ntotal) == x).all())
    except RuntimeError:  # an index kind that cannot reconstruct
        return False


def save_index(path: Path, index, key: dict, exact_storage: bool) -> None:
    from safetensors.torch import save

    faiss = faiss_module()
    data = faiss.serialize_index(index)
    meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "key": strict_json(key),
            "sha256": hashlib.sha256(data.tobytes()).hexdigest(),
            "exact_storage": str(bool(exact_storage))}
    atomic_write_bytes(path, save({"index": torch.from_numpy(data.copy())}, metadata=meta))


def load_index(path: Path, key: dict, metric: str, embeddings: torch.Tensor):
    """``(index, why)``: the saved index if it was made for ``key``, is the file that was
    written (its checksum) and holds what the key says (its vectors, where it stores them
    exactly); else ``(None, why not)``: the file is rebuilt."""
    from safetensors import safe_open

    faiss = faiss_module()
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta, blob = fh.metadata() or {}, fh.get_tensor("index")
        if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
            return None, "is not an index file of this version"
        if meta.get("key") != strict_json(key):
            return None, "was made for another gallery, metric or FAISS version"
        data = blob.numpy()
        if hashlib.sha256(data.tobytes()).hexdigest() != meta.get("sha256"):
            return None, "does not match its checksum (altered or damaged)"
        index = faiss.deserialize_index(data)
    except Exception:  # a truncated or foreign file: build again
        return None, "cannot be read"
    if index.ntotal != key["n"] or index.d != key["dim"] or \
            index.metric_type != faiss_metric(faiss, metric):
        return None, "holds another number or size of vectors"
    if meta.get("exact_storage") == "True" and not stores_exactly(
            index, as_faiss(embeddings, metric)):
        return None, "holds vectors that are not the gallery's"
    return index, None
