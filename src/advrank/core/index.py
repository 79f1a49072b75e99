"""Nearest-neighbour search over a gallery: exact (torch, the measurement of every attack) or
through a FAISS index (what a deployed search runs), behind one interface.

``build_index(embeddings [N, D], metric, spec) -> VectorIndex``; ``index.search(queries
[B, D], k) -> (ids [B, k] int64, scores [B, k] float32)``, nearest first. A score is the
metric's **distance** in advrank's convention (smaller = nearer): ``1 - cos`` for cosine (an
inner product of L2-normalised vectors inside FAISS), ``||a - b||_2`` for euclidean (FAISS's
squared L2, square-rooted). Where an approximate index finds fewer than k members the row
ends in ids ``-1`` with score ``+inf`` (callers drop them).

``spec``: ``exact`` (no index: :func:`~advrank.core.metrics.nearest_neighbors`), ``flat``
(FAISS brute force; same ids as exact), ``hnsw`` (``HNSW32``, FAISS's default efSearch 16 and
efConstruction 40), ``ivfpq`` (``IVF{nlist},PQ{m}x{nbits}`` sized from N and D, nprobe 16),
or any FAISS factory string (``IVF64,Flat``, ``HNSW16,PQ8``: FAISS's own defaults).

**Saved and reused.** With a cache folder the built index is written beside the gallery
embedding cache as ``index-<digest>.safetensors`` (the serialized index as bytes, no code),
keyed by the embeddings' SHA-256, metric, spec and FAISS version. On load it is validated
(key, size, dimension, metric); a stale or mismatched file is rebuilt, never used.
**Deterministic:** built on one thread (FAISS's k-means seed and HNSW level draws are fixed),
so the same gallery gives the same index, and the same ranks, on every run.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from advrank.core.distances import get_distance
from advrank.core.io import atomic_write_bytes, strict_json
from advrank.core.metrics import GALLERY_BLOCK, nearest_neighbors
from advrank.errors import AdvrankError
from advrank.registry import DISTANCES

PRESETS = ("exact", "flat", "hnsw", "ivfpq")
INDEX_FORMAT = "advrank-index"
INDEX_VERSION = "1"
IVF_NPROBE = 16


def faiss_module():
    """``faiss``, or one clear error naming the extra that installs it."""
    try:
        import faiss
    except ImportError:
        raise AdvrankError("FAISS indexes need faiss-cpu: pip install 'advrank[serve]' (or "
                           "use --index exact)") from None
    return faiss


def check_index_spec(spec: Any) -> str:
    """A preset name (case-insensitive) or a FAISS factory string, checked for form before any
    work (a factory string is parsed by FAISS when the index is built)."""
    if not isinstance(spec, str) or not spec.strip() or len(spec) > 200 or \
            not spec.isprintable():
        raise AdvrankError(f"index must be one of {', '.join(PRESETS)} or a FAISS factory string "
                           f"such as IVF64,Flat, got {spec!r}")
    spec = spec.strip()
    if spec.lower() in PRESETS:
        return spec.lower()
    faiss_module()
    return spec


def ivfpq_factory(n: int, dim: int) -> str:
    """The ``ivfpq`` preset for N vectors of dimension D: about 4 sqrt(N) lists (at least 39
    training points each, FAISS's minimum for a stable k-means), D / 4 sub-quantizers (a
    divisor of D), 8-bit codes when N gives each of the 256 centroids 39 training points,
    fewer bits otherwise."""
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    m = max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0)
    nbits = max(1, min(8, int(math.log2(max(2, n // 39)))))
    return f"IVF{nlist},PQ{m}x{nbits}"


def _factory(spec: str, n: int, dim: int) -> str:
    return {"flat": "Flat", "hnsw": "HNSW32"}.get(spec) or \
        (ivfpq_factory(n, dim) if spec == "ivfpq" else spec)


@contextlib.contextmanager
def _one_thread(faiss) -> Iterator[None]:
    """FAISS on one thread (parallel HNSW insertion and k-means reductions are not
    reproducible), restored afterwards."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _prepare(x: torch.Tensor, metric: str):
    """Float32 numpy rows as FAISS sees them (as the distance has the index hold them)."""
    x = x.detach().float().cpu()
    return get_distance(metric).index_rows(x).contiguous().numpy()


class VectorIndex:
    """An exact or FAISS search over a fixed gallery of ``size`` vectors of dimension ``dim``.
    ``info`` records how it was made (spec, factory string, search parameters, cache file)."""

    def __init__(self, spec: str, metric: str, embeddings: torch.Tensor, faiss_index=None,
                 info: dict[str, Any] | None = None):
        self.spec, self.metric, self.faiss_index = spec, metric, faiss_index
        self.size, self.dim = int(embeddings.shape[0]), int(embeddings.shape[1])
        # exact search needs the embeddings; a FAISS index holds its own copy or codes
        self.embeddings = embeddings if faiss_index is None else None
        self._prepared: torch.Tensor | None = None  # the exact search's gallery, prepared once
        self.info = {"index": spec, "metric": metric, "size": self.size, "dim": self.dim,
                     **(info or {})}

    @property
    def exact(self) -> bool:
        return self.faiss_index is None

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [B, k] int64, scores [B, k] float32)`` of ``queries [B, D]``, nearest first
        (scores are distances; ids -1 / scores +inf pad rows an index could not fill)."""
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise AdvrankError(f"queries must be [B, {self.dim}], got {list(queries.shape)}")
        if not 1 <= k <= self.size:
            raise AdvrankError(f"k must lie in [1, {self.size}] (the gallery size), got {k}")
        if self.exact and self.size <= GALLERY_BLOCK:
            return self._search_prepared(queries, k)
        if self.exact:
            distance = get_distance(self.metric)
            g = self.embeddings
            q = queries.to(g.device, g.dtype)
            ids = nearest_neighbors(q, g, k, distance)
            # each row's distances gathered from one [chunk, N] block: a gather of the
            # members' embeddings ([B, k, D]) would need k x D floats per query
            scores = torch.cat([distance.pairwise(q[s : s + SCORE_CHUNK], g).gather(
                1, ids[s : s + SCORE_CHUNK]) for s in range(0, q.shape[0], SCORE_CHUNK)])
            return ids.cpu().long(), scores.float().cpu()
        scores, ids = self.faiss_index.search(_prepare(queries, self.metric), k)
        scores, ids = torch.from_numpy(scores), torch.from_numpy(ids).long()
        scores = get_distance(self.metric).from_index_scores(scores)
        return ids, torch.where(ids < 0, torch.full_like(scores, math.inf), scores)


    def _search_prepared(self, queries: torch.Tensor, k: int):
        """Exact search of a gallery small enough for whole distance rows: the gallery's
        prepared form (normalised once for cosine) against ``SCORE_CHUNK`` queries at a time,
        ids and distances from one block (a service searches often, a few queries each)."""
        distance = get_distance(self.metric)
        if self._prepared is None:
            self._prepared = distance.prepare(self.embeddings)
        q = queries.to(self._prepared.device, self._prepared.dtype)
        ids, scores = [], []
        for s in range(0, q.shape[0], SCORE_CHUNK):
            top = distance.pairwise_prepared(q[s : s + SCORE_CHUNK], self._prepared).topk(
                k, dim=1, largest=False)
            ids.append(top.indices)
            scores.append(top.values)
        return torch.cat(ids).cpu().long(), torch.cat(scores).float().cpu()


#: queries whose distance rows are computed at once for the exact search's scores
SCORE_CHUNK = 256


def _key(embeddings: torch.Tensor, metric: str, spec: str, fingerprint: str | None) -> dict:
    faiss = faiss_module()
    data = embeddings.detach().float().cpu().contiguous().numpy().tobytes()
    return {"index": 1, "embeddings_sha": hashlib.sha256(data).hexdigest(), "metric": metric,
            "spec": spec, "n": int(embeddings.shape[0]), "dim": int(embeddings.shape[1]),
            "gallery": fingerprint, "faiss": faiss.__version__}


def _faiss_metric(faiss, metric: str) -> int:
    return getattr(faiss, get_distance(metric).index_metric)


def _train_and_add(embeddings: torch.Tensor, metric: str, spec: str):
    """A new FAISS index of ``spec`` holding ``embeddings [N, D]`` (trained if it needs it)."""
    faiss = faiss_module()
    n, dim = embeddings.shape
    factory = _factory(spec, n, dim)
    x = _prepare(embeddings, metric)
    with _one_thread(faiss):
        try:
            index = faiss.index_factory(dim, factory, _faiss_metric(faiss, metric))
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


def _search_params(index) -> dict[str, Any]:
    """The search-time parameters that decide an approximate index's recall."""
    faiss = faiss_module()
    out: dict[str, Any] = {}
    with contextlib.suppress(RuntimeError):
        out["nprobe"] = int(faiss.extract_index_ivf(index).nprobe)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        out["ef_search"], out["ef_construction"] = int(hnsw.efSearch), int(hnsw.efConstruction)
    return out


def _save(path: Path, index, key: dict) -> None:
    from safetensors.torch import save

    faiss = faiss_module()
    blob = torch.from_numpy(faiss.serialize_index(index).copy())
    meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "key": strict_json(key)}
    atomic_write_bytes(path, save({"index": blob}, metadata=meta))


def _load(path: Path, key: dict, metric: str):
    """The saved index if it was made for ``key`` and holds what the key says; else None (a
    stale, foreign or damaged file is rebuilt)."""
    from safetensors import safe_open

    faiss = faiss_module()
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta, blob = fh.metadata() or {}, fh.get_tensor("index")
        if meta.get("format") != INDEX_FORMAT or meta.get("key") != strict_json(key):
            return None
        index = faiss.deserialize_index(blob.numpy())
    except Exception:  # a truncated or foreign file: build again
        return None
    if index.ntotal != key["n"] or index.d != key["dim"] or \
            index.metric_type != _faiss_metric(faiss, metric):
        return None
    return index


def build_index(embeddings: torch.Tensor, metric: str, spec: str = "exact",
                cache_dir: str | Path | None = None, fingerprint: str | None = None,
                log: Callable[[str], None] = lambda msg: None) -> VectorIndex:
    """The search of ``spec`` over ``embeddings [N, D]`` ranked by ``metric`` (cosine or
    euclidean). With ``cache_dir`` a FAISS index is read from (validated) or written to
    ``cache_dir/index-<digest>.safetensors``; ``fingerprint`` (the gallery's) joins the key."""
    spec = check_index_spec(spec)
    metric = get_distance(metric).name
    if get_distance(metric).index_metric is None:
        ranked = [n for n in DISTANCES.names() if DISTANCES.get(n).index_metric is not None]
        raise AdvrankError(f"indexes rank by {' or '.join(ranked)}, not {metric}")
    if embeddings.dim() != 2 or embeddings.shape[0] < 1 or not embeddings.is_floating_point():
        raise AdvrankError(f"index embeddings must be float [N, D], got "
                           f"{list(embeddings.shape)}")
    if spec == "exact":
        return VectorIndex(spec, metric, embeddings)
    key = _key(embeddings, metric, spec, fingerprint)
    path = index = None
    info: dict[str, Any] = {"factory": _factory(spec, *embeddings.shape)}
    if cache_dir is not None:
        digest = hashlib.sha256(strict_json(key).encode()).hexdigest()
        path = Path(cache_dir) / f"index-{digest[:24]}.safetensors"
        index = _load(path, key, metric) if path.is_file() else None
        if index is None and path.is_file():
            log(f"index file {path} does not match the gallery; building it again")
        info["cache"] = {"file": str(path), "reused": index is not None}
    if index is None:
        index = _train_and_add(embeddings, metric, spec)
        if path is not None:
            _save(path, index, key)
    elif spec == "ivfpq":  # search parameters are not part of the file's contract
        faiss_module().extract_index_ivf(index).nprobe = IVF_NPROBE
    return VectorIndex(spec, metric, embeddings, index, {**info, **_search_params(index)})
