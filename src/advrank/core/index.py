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

**Row by row** (what a search service needs: an answer never depends on what shares its
batch): :meth:`VectorIndex.search_rows` and :meth:`VectorIndex.rank_rows`. Exact search is
answered in float64 (:mod:`advrank.core.refine`); a FAISS index searches each query on its
own (below FAISS's BLAS threshold it computes query by query, so batches are cut to stay
below it).

**Live.** :meth:`VectorIndex.add` inserts vectors the way the index kind inserts them (they
take the next ids); :meth:`VectorIndex.remove` leaves a tombstone that every search filters
(over-fetching, so k results still come back): ids are never reused.

**Saved and reused** (:mod:`advrank.core.index_file`): with a cache folder the built index
is written beside the gallery embedding cache with its key and checksum, and read back only
when both match (a stale, altered or mismatched file is rebuilt with a note).
**Deterministic:** built on one thread (FAISS's k-means seed and HNSW level draws are fixed),
so the same gallery gives the same index, and the same ranks, on every run.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advrank.core.distances import get_distance
from advrank.core.faiss_tools import (
    IVF_NPROBE,
    as_faiss,
    factory_string,
    faiss_module,
    ivfpq_factory,
    one_thread,
    search_params,
    train_and_add,
)
from advrank.core.index_file import index_key, load_index, save_index, stores_exactly
from advrank.core.io import strict_json
from advrank.core.metrics import GALLERY_BLOCK, nearest_neighbors
from advrank.core.refine import RefinedExact
from advrank.errors import AdvrankError
from advrank.registry import DISTANCES

__all__ = ["PRESETS", "VectorIndex", "build_index", "check_index_spec", "faiss_module",
           "ivfpq_factory"]

PRESETS = ("exact", "flat", "hnsw", "ivfpq")
#: queries whose distance rows are computed at once for the exact search's scores
SCORE_CHUNK = 256


#: who is searching a flat index through BLAS now, and FAISS's setting before the first
_BLAS = {"users": 0, "before": None}
_BLAS_LOCK = threading.Lock()


@contextlib.contextmanager
def blas_for(faiss, queries: int):
    """FAISS's brute-force search of ``queries`` queries through BLAS when there are two or
    more (one pass over the gallery for all; measured: one query is faster without). A
    global setting of FAISS: set by the first of concurrent searches, restored by the last;
    the answers are re-measured in float64, so the path never shows in them."""
    if queries <= 1:
        yield
        return
    with _BLAS_LOCK:
        if not _BLAS["users"]:
            _BLAS["before"] = faiss.cvar.distance_compute_blas_threshold
            faiss.cvar.distance_compute_blas_threshold = 1
        _BLAS["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS["users"] -= 1
            if not _BLAS["users"]:
                faiss.cvar.distance_compute_blas_threshold = _BLAS["before"]


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


class VectorIndex:
    """An exact or FAISS search over ``size`` vectors of dimension ``dim`` (ids ``[0,
    size)``; ``live`` of them not removed). ``info`` records how it was made (spec, factory
    string, search parameters, cache file)."""

    def __init__(self, spec: str, metric: str, embeddings: torch.Tensor, faiss_index=None,
                 info: dict[str, Any] | None = None):
        self.spec, self.metric, self.faiss_index = spec, metric, faiss_index
        self.size, self.dim = int(embeddings.shape[0]), int(embeddings.shape[1])
        # exact search needs the embeddings; a FAISS index holds its own copy or codes
        self.embeddings = embeddings if faiss_index is None else None
        self._prepared: torch.Tensor | None = None  # the exact search's gallery, prepared once
        self._refined: RefinedExact | None = None  # the row-by-row exact search
        self.dead = torch.zeros(self.size, dtype=torch.bool)  # tombstones
        self.info = {"index": spec, "metric": metric, "size": self.size, "dim": self.dim,
                     **(info or {})}

    @property
    def exact(self) -> bool:
        return self.faiss_index is None

    @property
    def live(self) -> int:
        """Vectors a search may return (not removed)."""
        return self.size - int(self.dead.sum())

    def _check(self, queries: torch.Tensor, k: int) -> None:
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise AdvrankError(f"queries must be [B, {self.dim}], got {list(queries.shape)}")
        if not 1 <= k <= self.live:
            raise AdvrankError(f"k must lie in [1, {self.live}] (the items held), got {k}")

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [B, k] int64, scores [B, k] float32)`` of ``queries [B, D]``, nearest first
        (scores are distances; ids -1 / scores +inf pad rows an index could not fill)."""
        self._check(queries, k)
        fetch = min(self.size, k + self.size - self.live)  # room for the tombstones
        if not self.exact:
            ids, scores = self._faiss(queries, fetch)
        elif self.size <= GALLERY_BLOCK:
            ids, scores = self._search_prepared(queries, fetch)
        else:
            distance = get_distance(self.metric)
            g = self.embeddings
            q = queries.to(g.device, g.dtype)
            ids = nearest_neighbors(q, g, fetch, distance)
            # each row's distances gathered from one [chunk, N] block: a gather of the
            # members' embeddings ([B, k, D]) would need k x D floats per query
            scores = torch.cat([distance.pairwise(q[s : s + SCORE_CHUNK], g).gather(
                1, ids[s : s + SCORE_CHUNK]) for s in range(0, q.shape[0], SCORE_CHUNK)])
            ids, scores = ids.cpu().long(), scores.float().cpu()
        return self._alive(ids, scores, k)

    def _alive(self, ids: torch.Tensor, scores: torch.Tensor, k: int):
        """The first ``k`` live members of each row (-1 / +inf where fewer remain)."""
        if self.live == self.size:
            return ids[:, :k], scores[:, :k]
        gone = ids >= 0
        gone[gone.clone()] = self.dead[ids[ids >= 0]]
        order = torch.sort(gone.to(torch.int8), dim=1, stable=True).indices[:, :k]
        ids, scores = ids.gather(1, order), scores.gather(1, order)
        dropped = gone.gather(1, order)
        return ids.masked_fill(dropped, -1), scores.masked_fill(dropped, math.inf)

    def _faiss(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        # below FAISS's BLAS threshold each query is computed on its own: no batch shapes
        step = max(1, min(int(faiss_module().cvar.distance_compute_blas_threshold) - 1, 4096))
        out = [self.faiss_index.search(as_faiss(queries[s : s + step], self.metric), k)
               for s in range(0, queries.shape[0], step)]
        scores = torch.from_numpy(np.concatenate([o[0] for o in out]))
        ids = torch.from_numpy(np.concatenate([o[1] for o in out])).long()
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

    def _refine(self) -> RefinedExact:
        if self._refined is None:
            self._refined = RefinedExact(self.embeddings, get_distance(self.metric))
        return self._refined

    @torch.no_grad()
    def search_rows(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`search`, each row answered as it would be alone (whatever the batch):
        exact search and FAISS's flat index in float64 (:mod:`advrank.core.refine`: FAISS's
        own batched pass finds the candidates), other FAISS indexes query by query."""
        self._check(queries, k)
        if self.exact:
            return self._refine().topk(queries, k, self.dead if self.live < self.size
                                       else None)
        if self._flat_vectors() is not None:
            return self._flat_rows(queries, k)
        return self._alive(*self._faiss(queries, min(self.size, k + self.size - self.live)),
                           k)

    def _flat_vectors(self) -> torch.Tensor | None:
        """The vectors a FAISS flat index stores (a view, no copy), or None for other kinds."""
        faiss = faiss_module()
        flat = faiss.downcast_index(self.faiss_index)
        if not isinstance(flat, faiss.IndexFlat):
            return None
        view = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d)
        return torch.from_numpy(view).view(flat.ntotal, flat.d)

    def _flat_refine(self) -> RefinedExact:
        """The float64 re-measure over the flat index's own vectors (made again after an
        insertion: FAISS may have moved them)."""
        if self._refined is None or self._refined.gallery.shape[0] != self.size:
            self._refined = RefinedExact.for_candidates(self._flat_vectors(),
                                                        get_distance(self.metric))
        return self._refined

    def _flat_rows(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """FAISS's flat search (batched: BLAS) for candidates, re-measured in float64: a
        row's candidates are every live item within twice the float32 bound of its k-th,
        fetched deeper until the list goes past them."""
        faiss = faiss_module()
        refine = self._flat_refine()
        err, x = refine.error(queries), as_faiss(queries, self.metric)
        # a search costs its pass over the gallery, hardly its k: fetch deep enough at once
        fetch = min(self.size, 2 * k + 64 + self.size - self.live)
        while True:
            with blas_for(faiss, len(x)):
                scores, found = self.faiss_index.search(x, fetch)
            keys = torch.from_numpy(scores).double()
            keys = 1.0 - keys if self.metric == "cosine" else keys  # (squared for L2)
            found = torch.from_numpy(found).long()
            out = [self._flat_row(refine, queries[r], found[r], keys[r], float(err[r]), k,
                                  fetch == self.size) for r in range(len(found))]
            if all(o is not None for o in out):
                return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])
            fetch = min(self.size, 2 * fetch)

    def _flat_row(self, refine: RefinedExact, q: torch.Tensor, found: torch.Tensor,
                  keys: torch.Tensor, err: float, k: int, whole: bool):
        live = found >= 0
        live[live.clone()] = ~self.dead[found[found >= 0]]
        found, keys = found[live], keys[live]
        limit = float(keys[k - 1]) + 2 * err
        if not whole and float(keys[-1]) <= limit:
            return None  # the band may go on past the list: fetch deeper
        return refine.finish(q, found[keys <= limit], k)

    @torch.no_grad()
    def rank_rows(self, queries: torch.Tensor, named: list[torch.Tensor], depth: int
                  ) -> list[list[int | None]]:
        """Where each id of ``named[b] [j]`` sits in row b's top-``depth`` list, as
        :meth:`search_rows` ranks it (0 = nearest; None beyond it, or removed)."""
        self._check(queries, depth)
        dead = self.dead if self.live < self.size else None
        if self.exact:
            return self._refine().ranks(queries, named, depth, dead)
        if self._flat_vectors() is not None:  # every key at once, from the stored vectors
            refine = self._flat_refine()
            err, x = refine.error(queries), torch.from_numpy(as_faiss(queries, self.metric))
            g = refine.gallery
            keys = 1.0 - x @ g.T if self.metric == "cosine" else \
                ((x * x).sum(1, keepdim=True) + (g * g).sum(1)[None] - 2.0 * x @ g.T)
            if dead is not None:
                keys[:, dead] = math.inf
            return [refine.ranks_from_keys(queries[r], keys[r], float(err[r]), named[r], depth)
                    for r in range(len(keys))]
        ids, _ = self.search_rows(queries, depth)
        out = []
        for row, want in zip(ids, named, strict=True):
            hit = row[None, :] == want[:, None]  # [j, depth]
            pos = torch.where(hit.any(1), hit.float().argmax(1), -1).tolist()
            out.append([p if p >= 0 else None for p in pos])
        return out

    def add(self, vectors: torch.Tensor) -> int:
        """Insert ``vectors [m, D]`` as the index kind inserts them (FAISS's ``add``: HNSW
        links them into its graph, IVF assigns them to lists, PQ encodes them); their ids
        are ``size`` to ``size + m - 1``. Returns the first."""
        if vectors.dim() != 2 or vectors.shape[1] != self.dim or \
                not torch.isfinite(vectors).all():
            raise AdvrankError(f"vectors to insert must be finite [m, {self.dim}]")
        first = self.size
        if self.exact:
            self.embeddings = torch.cat([self.embeddings, vectors.to(self.embeddings)])
            self._prepared = None
            if self._refined is not None:
                self._refined.add(vectors)
        else:
            faiss = faiss_module()
            with one_thread(faiss):  # HNSW insertion is reproducible on one thread
                self.faiss_index.add(as_faiss(vectors, self.metric))
        self.size += vectors.shape[0]
        self.dead = torch.cat([self.dead, torch.zeros(vectors.shape[0], dtype=torch.bool)])
        self.info["size"] = self.size
        return first

    def remove(self, i: int) -> None:
        """Leave a tombstone on id ``i``: no search returns it again."""
        if not 0 <= i < self.size or self.dead[i]:
            raise AdvrankError(f"no live vector {i} to remove")
        self.dead[i] = True


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
    key = index_key(embeddings, metric, spec, fingerprint)
    path = index = None
    info: dict[str, Any] = {"factory": factory_string(spec, *embeddings.shape)}
    if cache_dir is not None:
        digest = hashlib.sha256(strict_json(key).encode()).hexdigest()
        path = Path(cache_dir) / f"index-{digest[:24]}.safetensors"
        if path.is_file():
            index, why = load_index(path, key, metric, embeddings)
            if index is None:
                log(f"index file {path} {why}; building it again")
        info["cache"] = {"file": str(path), "reused": index is not None}
    if index is None:
        index = train_and_add(embeddings, metric, spec)
        if path is not None:
            save_index(path, index, key, stores_exactly(index, as_faiss(embeddings, metric)))
    elif spec == "ivfpq":  # search parameters are not part of the file's contract
        faiss_module().extract_index_ivf(index).nprobe = IVF_NPROBE
    return VectorIndex(spec, metric, embeddings, index, {**info, **search_params(index)})
