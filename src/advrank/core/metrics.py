"""Ranking metrics on an embedded gallery, chunked so that memory stays bounded.

Conventions: the gallery X is ``gallery [N, D]`` (embeddings) with ``labels [N]``. A query that
belongs to the gallery is left out of its own ranking list. ``Rank_X(q, c)`` is 0-based: the
number of other gallery members strictly closer to q than c; the paper's normalized rank is
``R(q, c) = 100 * Rank_X(q, c) / |X|`` (percent). Recall@K and mAP are in percent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from advrank.core.checks import check_finite, check_flag, check_int, check_list
from advrank.core.distances import Distance, get_distance
from advrank.errors import AdvrankError

DEFAULT_CHUNK = 1024


def _self_mask(dist: torch.Tensor, row_index: torch.Tensor | None) -> torch.Tensor:
    if row_index is not None:
        dist[torch.arange(dist.shape[0], device=dist.device), row_index.to(dist.device)] = float(
            "inf"
        )
    return dist


#: gallery rows ranked at once by nearest_neighbors: every gallery of the paper fits one block
#: (as before); larger ones are merged block by block so memory stays bounded
GALLERY_BLOCK = 1 << 18


def check_embeddings(gallery: torch.Tensor, labels: torch.Tensor) -> None:
    """A finite float gallery ``[N, D]`` (N >= 2) with integer labels ``[N]``."""
    if not isinstance(gallery, torch.Tensor) or gallery.dim() != 2 or \
            not gallery.is_floating_point() or gallery.shape[0] < 2:
        raise AdvrankError(f"the gallery must be a float tensor [N, D] with N >= 2, got "
                           f"{getattr(gallery, 'shape', type(gallery).__name__)}")
    if not isinstance(labels, torch.Tensor) or labels.shape != gallery.shape[:1] or \
            labels.is_floating_point():
        raise AdvrankError(f"labels must be an integer tensor [{gallery.shape[0]}], got "
                           f"{getattr(labels, 'shape', type(labels).__name__)}")
    check_finite(gallery, "the gallery embeddings")


@torch.no_grad()
def nearest_neighbors(
    queries: torch.Tensor, gallery: torch.Tensor, k: int, distance: Distance,
    query_index: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK,
    block: int = GALLERY_BLOCK,
) -> torch.Tensor:
    """Indices ``[Q, k]`` of the k nearest gallery members of each query, nearest first.

    ``query_index [Q]`` (optional) gives each query's own position in the gallery, which is
    then left out of its list. Queries go ``chunk`` at a time against ``block`` gallery rows at
    a time (the best k so far merged with each block's), so a 10M-item gallery needs no
    10M-wide distance row.
    """
    n = gallery.shape[0]
    if n <= block:
        out = []
        for s in range(0, queries.shape[0], chunk):
            d = distance.pairwise(queries[s : s + chunk], gallery)
            d = _self_mask(d, None if query_index is None else query_index[s : s + chunk])
            out.append(d.topk(k, dim=1, largest=False).indices)
        return torch.cat(out)
    chunk = max(1, min(chunk, (1 << 28) // (block + k)))  # <= 1 GiB of distances at once
    out = []
    for s in range(0, queries.shape[0], chunk):
        q = queries[s : s + chunk]
        own = None if query_index is None else query_index[s : s + chunk].to(gallery.device)
        best_d = best_i = None
        for b in range(0, n, block):
            d = distance.pairwise(q, gallery[b : b + block])
            if own is not None:
                hit = (own >= b) & (own < b + d.shape[1])
                rows = hit.nonzero().squeeze(1)
                d[rows, own[rows] - b] = float("inf")
            top = d.topk(min(k, d.shape[1]), dim=1, largest=False)
            cand_d, cand_i = top.values, top.indices + b
            if best_d is not None:
                cand_d, cand_i = torch.cat([best_d, cand_d], 1), torch.cat([best_i, cand_i], 1)
                keep = cand_d.topk(min(k, cand_d.shape[1]), dim=1, largest=False).indices
                cand_d, cand_i = cand_d.gather(1, keep), cand_i.gather(1, keep)
            best_d, best_i = cand_d, cand_i
        out.append(best_i)
    return torch.cat(out)


@torch.no_grad()
def recall_at_k(
    gallery: torch.Tensor, labels: torch.Tensor, distance: Distance,
    ks: Sequence[int] = (1, 2, 4, 8), chunk: int = DEFAULT_CHUNK,
) -> dict[int, float]:
    """Recall@K in percent with every gallery member used as a (left-out) query."""
    check_embeddings(gallery, labels)
    ks = check_list(ks, "K of Recall@K", lambda k: check_int(k, "K of Recall@K"))
    n = gallery.shape[0]
    kmax = min(max(ks), n - 1)
    labels = labels.to(gallery.device)
    nn_idx = nearest_neighbors(gallery, gallery, kmax, distance, torch.arange(n), chunk)
    hit = labels[nn_idx] == labels[:, None]  # [N, kmax]
    return {k: 100.0 * hit[:, : min(k, kmax)].any(1).float().mean().item() for k in ks}


@torch.no_grad()
def mean_average_precision(
    gallery: torch.Tensor, labels: torch.Tensor, distance: Distance, chunk: int = 256
) -> float:
    """mAP over all (left-out) queries, relevant = same label; a fraction in [0, 1]."""
    check_embeddings(gallery, labels)
    n = gallery.shape[0]
    labels = labels.to(gallery.device)
    ap_sum, counted = 0.0, 0
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(s + chunk, n), device=gallery.device)
        d = _self_mask(distance.pairwise(gallery[rows], gallery), rows)
        order = d.argsort(dim=1)[:, :-1]  # drop the masked self (sorted last, at +inf)
        rel = (labels[order] == labels[rows, None]).float()  # [B, N-1]
        hits = rel.cumsum(1)
        prec = hits / torch.arange(1, n, device=gallery.device)
        num_rel = rel.sum(1)
        valid = num_rel > 0
        ap = (prec * rel).sum(1)[valid] / num_rel[valid]
        ap_sum += ap.sum().item()
        counted += int(valid.sum())
    return ap_sum / max(counted, 1)


def nmi(gallery: torch.Tensor, labels: torch.Tensor, distance: Distance, seed: int = 0) -> float:
    """Normalized mutual information (percent) between the labels and a k-means clustering of
    the embeddings into as many clusters as there are labels (cosine: on unit vectors)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    x = distance.prepare(gallery.float()).cpu().numpy()
    y = labels.cpu().numpy()
    clusters = KMeans(n_clusters=len(set(y.tolist())), n_init=3, random_state=seed).fit_predict(x)
    return 100.0 * float(normalized_mutual_info_score(y, clusters))


def retrieval_metrics(
    gallery: torch.Tensor, labels: torch.Tensor, distance: Distance,
    ks: Sequence[int] = (1, 2, 4, 8), with_nmi: bool = False,
) -> dict[str, float]:
    """``{"recall@1": %, ..., "map": %}`` for the gallery used as its own query set (mAP in
    percent, like every other figure); ``nmi`` (%) too when asked."""
    distance = get_distance(distance)
    check_flag(with_nmi, "with_nmi")
    out = {f"recall@{k}": v for k, v in recall_at_k(gallery, labels, distance, ks).items()}
    out["map"] = 100.0 * mean_average_precision(gallery, labels, distance)
    if with_nmi:
        out["nmi"] = nmi(gallery, labels, distance)
    return out


@torch.no_grad()
def count_closer(
    anchors: torch.Tensor, thresholds: torch.Tensor, gallery: torch.Tensor, distance: Distance,
    exclude: torch.Tensor | None = None, targets: torch.Tensor | None = None, chunk: int = 4096,
) -> torch.Tensor:
    """For each anchor a and threshold t: ``#{x in gallery : d(a, x) < t}``, minus exclusions.

    anchors ``[A, D]``, thresholds ``[A, K]``. ``exclude [A, E]``: gallery indices that never
    compete for that anchor (the query itself, the clean copy of a perturbed candidate).
    ``targets [A, K]``: the gallery index each threshold belongs to (or -1), which is not
    counted against itself whatever the floating-point round-off. Returns ``[A, K]`` int64:
    ``Rank_X`` (0-based) of an item at distance t from a.
    """
    counts = torch.zeros(thresholds.shape, dtype=torch.long, device=thresholds.device)
    for s in range(0, gallery.shape[0], chunk):
        d = distance.pairwise(anchors, gallery[s : s + chunk])  # [A, c]
        cols = torch.arange(s, s + d.shape[1], device=d.device)
        if exclude is not None:
            excluded = (exclude[:, :, None] == cols[None, None, :]).any(1)  # [A, c]
            d = d.masked_fill(excluded, float("inf"))
        closer = d[:, None, :] < thresholds[:, :, None]  # [A, K, c]
        if targets is not None:
            closer &= targets[:, :, None] != cols[None, None, :]
        counts += closer.sum(-1)
    return counts


@torch.no_grad()
def query_metrics(
    queries: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
    gallery_labels: torch.Tensor, distance: Distance, ks: Sequence[int] = (1, 2, 4, 8),
    query_index: torch.Tensor | None = None, chunk: int = 256,
) -> dict[str, float]:
    """Recall@K and mAP (percent) of separate queries ``[Q, D]`` against a gallery ``[N, D]``.

    ``query_index [Q]``: each query's own position in the gallery (left out of its list), for
    queries drawn from the gallery itself; None for a disjoint query set. With every gallery
    member as a query this equals :func:`retrieval_metrics` (without NMI). Queries without a
    relevant gallery member count as misses for Recall@K and are left out of mAP.
    """
    n = gallery.shape[0]
    g_labels = gallery_labels.to(gallery.device)
    q_labels = query_labels.to(gallery.device)
    length = n - (1 if query_index is not None else 0)
    kmax = min(max(ks), length)
    hits_at = torch.zeros(len(ks), dtype=torch.float64)
    ap_sum, counted = 0.0, 0
    for s in range(0, queries.shape[0], chunk):
        d = distance.pairwise(queries[s : s + chunk].to(gallery.device), gallery)
        if query_index is not None:
            d = _self_mask(d, query_index[s : s + chunk])
        order = d.argsort(dim=1)[:, :length]  # a masked self sorts last and is dropped
        rel = (g_labels[order] == q_labels[s : s + chunk, None]).float()  # [B, length]
        for j, k in enumerate(ks):
            hits_at[j] += rel[:, : min(k, kmax)].any(1).double().sum().item()
        num_rel = rel.sum(1)
        prec = rel.cumsum(1) / torch.arange(1, length + 1, device=gallery.device)
        valid = num_rel > 0
        ap_sum += ((prec * rel).sum(1)[valid] / num_rel[valid]).sum().item()
        counted += int(valid.sum())
    q = max(queries.shape[0], 1)
    out = {f"recall@{k}": 100.0 * hits_at[j].item() / q for j, k in enumerate(ks)}
    out["map"] = 100.0 * ap_sum / max(counted, 1)
    return out
