"""Searching an index with one upload inserted, as a catalog inserts an uploaded picture: the
measurement of a candidate attack (CA) through an approximate index.

A candidate attack's image c~ is not a query: it is a picture a seller uploads, which the
catalog inserts into its index before any buyer's query reaches it. Through an approximate
index (HNSW, IVF-PQ) where c~ lands in the graph or the inverted lists decides whether a query
finds it, so the honest measurement inserts c~ and searches; counting the members of the
index's answer that lie nearer than d(q, c~) instead credits c~ with every place a poor
approximate answer leaves free (unattacked candidates looked "in the top 100" 82% of the time
through HNSW against 11% through exact search).

Each upload goes into its own copy of the index (FAISS's own ``add``), so the figures of one
attack never depend on which others share its batch. The copies are made from one
deserialized base, so an index read from its cache file and one built afresh insert alike
(HNSW draws each new vector's level from a generator that serialization resets).

Until :class:`~advrank.core.index.VectorIndex` has an insertion of its own (the search
service's), this module is the one place that inserts into an index.
"""

from __future__ import annotations

import weakref

import torch

from advrank.core.distances import get_distance
from advrank.core.index import VectorIndex, faiss_module
from advrank.errors import AdvrankError

#: the deserialized copy of each FAISS index that uploads are inserted into copies of
_BASES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rows(x: torch.Tensor, metric: str):
    """Float32 numpy rows as the index holds them (as the distance has it hold them)."""
    return get_distance(metric).index_rows(x.detach().float().cpu()).contiguous().numpy()


def _base(index: VectorIndex):
    if index not in _BASES:
        faiss = faiss_module()
        _BASES[index] = faiss.deserialize_index(faiss.serialize_index(index.faiss_index))
    return _BASES[index]


@torch.no_grad()
def upload_positions(index: VectorIndex, uploads: torch.Tensor, queries: torch.Tensor,
                     exclude: torch.Tensor, depth: int) -> torch.Tensor:
    """Where each upload appears in the answers of its queries once inserted into the index.

    ``uploads [B, D]``: one picture's embedding per attack; ``queries [B, w, D]``: the queries
    that search for it; ``exclude [B, w, j]``: gallery ids left out of each answer (the query
    itself, the upload's clean copy). Returns ``[B, w]`` int64: the number of other members
    ahead of the upload in the answer (0: first), ``depth`` when it is not among the first
    ``depth`` members returned. An exact index needs no insertion (the caller counts)."""
    if index.exact:
        raise AdvrankError("an exact search needs no insertion: count the members nearer "
                           "than the upload")
    faiss = faiss_module()
    b, w, _ = queries.shape
    own = index.size  # the id FAISS gives the one vector added to a copy of the index
    k = min(depth + exclude.shape[-1] + 1, own + 1)
    out = torch.full((b, w), depth, dtype=torch.long)
    base, threads = _base(index), faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # insertion on one thread: the same graph on every run
    try:
        for i in range(b):
            copy = faiss.clone_index(base)
            copy.add(_rows(uploads[i : i + 1], index.metric))
            _, ids = copy.search(_rows(queries[i], index.metric), k)
            out[i] = _positions(torch.from_numpy(ids).long(), exclude[i].cpu(), own, depth)
    finally:
        faiss.omp_set_num_threads(threads)
    return out


def _positions(ids: torch.Tensor, exclude: torch.Tensor, own: int, depth: int) -> torch.Tensor:
    """``[w]``: the place of id ``own`` in each answer ``ids [w, k]`` once the ids of
    ``exclude [w, j]`` are left out (``depth`` when it is not in the first ``depth``)."""
    kept = (ids >= 0) & ~(ids[:, :, None] == exclude[:, None, :]).any(-1)
    out = torch.full((ids.shape[0],), depth, dtype=torch.long)
    for row in range(ids.shape[0]):
        hit = (ids[row][kept[row]][:depth] == own).nonzero()
        if hit.numel():
            out[row] = int(hit[0, 0])
    return out

