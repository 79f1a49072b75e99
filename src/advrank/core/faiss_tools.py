"""FAISS as advrank uses it: the import (one clear error without it), the factory strings of
the presets, one-thread building (reproducible), the vectors as FAISS sees them (float32,
L2-normalised for cosine), and the search parameters that decide an index's recall."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from advrank.core.distances import get_distance
from advrank.errors import AdvrankError

IVF_NPROBE = 16


def faiss_module():
    """``faiss``, or one clear error naming the extra that installs it."""
    try:
        import faiss
    except ImportError:
        raise AdvrankError("FAISS indexes need faiss-cpu: pip install 'advrank[serve]' (or "
                           "use --index exact)") from None
    return faiss


def ivfpq_factory(n: int, dim: int) -> str:
    """The ``ivfpq`` preset for N vectors of dimension D: about 4 sqrt(N) lists (at least 39
    training points each, FAISS's minimum for a stable k-means), D / 4 sub-quantizers (a
    divisor of D), 8-bit codes when N gives each of the 256 centroids 39 training points,
    fewer bits otherwise."""
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    m = max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0)
    nbits = max(1, min(8, int(math.log2(max(2, n // 39)))))
    return f"IVF{nlist},PQ{m}x{nbits}"


def factory_string(spec: str, n: int, dim: int) -> str:
    """The FAISS factory string of ``spec`` (a preset or a factory string itself)."""
    return {"flat": "Flat", "hnsw": "HNSW32"}.get(spec) or \
        (ivfpq_factory(n, dim) if spec == "ivfpq" else spec)


@contextlib.contextmanager
def one_thread(faiss) -> Iterator[None]:
    """FAISS on one thread (parallel HNSW insertion and k-means reductions are not
    reproducible), restored afterwards."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def as_faiss(x: torch.Tensor, metric: str):
    """Float32 numpy rows as FAISS sees them (as the distance has the index hold them)."""
    x = x.detach().float().cpu()
    return get_distance(metric).index_rows(x).contiguous().numpy()


def faiss_metric(faiss, metric: str) -> int:
    return getattr(faiss, get_distance(metric).index_metric)


def train_and_add(embeddings: torch.Tensor, metric: str, spec: str):
    """A new FAISS index of ``spec`` holding ``embeddings [N, D]`` (trained if it needs it)."""
    faiss = faiss_module()
    n, dim = embeddings.shape
    factory = factory_string(spec, n, dim)
    x = as_faiss(embeddings, metric)
    with one_thread(faiss):
        try:
            index = faiss.index_factory(dim, factory, faiss_metric(faiss, metric))
            if spec == "ivfpq":  # polysemous codes (FAISS's default) take minutes to train
                faiss.downcast_index(index).do_polysemous_training = False
            if not index.is_trained:
                index.train(x)
            index.add(x)
        except RuntimeError as exc:  # FAISS's message: e.g. PQ m must divide D
            lines = [line for line in str(exc).splitlines() if line.strip()]
            why = lines[-1].strip() if lines else type(exc).__name__
            raise AdvrankError(f"cannot build FAISS index {factory!r} over {n} x {dim} "
                               f"embeddings: {why[:200]}") from None
    if spec == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = IVF_NPROBE
    return index


def search_params(index) -> dict[str, Any]:
    """The search-time parameters that decide an approximate index's recall."""
    faiss = faiss_module()
    out: dict[str, Any] = {}
    with contextlib.suppress(RuntimeError):
        out["nprobe"] = int(faiss.extract_index_ivf(index).nprobe)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        out["ef_search"], out["ef_construction"] = int(hnsw.efSearch), int(hnsw.efConstruction)
    return out
