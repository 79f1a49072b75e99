"""Queries that are not gallery members: a text query set embedded by a dual encoder's text
tower, in the gallery's space. Candidate attacks take one as their Q (``kind.for_queries``,
see :mod:`advrank.attacks.ca`); this module holds the embedded set, the §4 draws against it
and its retrieval quality (R@K, mAP against the class labels)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from advrank.attacks.selection import draw_anchors, top_pool_size
from advrank.core.checks import check_finite
from advrank.core.gallery import Gallery
from advrank.core.metrics import nearest_neighbors, query_metrics
from advrank.data.texts import UNLABELLED, TextQueries
from advrank.errors import AdvrankError
from advrank.models.dual import text_encoder


@dataclass
class QuerySet:
    """Outside queries: ``embeddings [Q, D]`` in the gallery's space, ``labels [Q]`` int64
    (:data:`~advrank.data.texts.UNLABELLED` where a text names no class), ``texts [Q]`` and
    what results record about them (``info``)."""

    embeddings: torch.Tensor
    labels: torch.Tensor
    texts: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def all_labelled(self) -> bool:
        return bool((self.labels != UNLABELLED).all())


@torch.no_grad()
def embed_text_queries(model: nn.Module, queries: TextQueries,
                       device: torch.device | str | None = None) -> QuerySet:
    """``queries`` through ``model``'s text tower (refused, one line, for a single-tower
    model), on ``device`` (default: the model's)."""
    if not isinstance(queries, TextQueries):
        raise AdvrankError(f"queries must be TextQueries (read_text_queries), got "
                           f"{type(queries).__name__}")
    dual = text_encoder(model)
    dual.eval()
    emb = check_finite(dual.encode_text(list(queries.texts)), "the text query embeddings")
    if device is not None:
        emb = emb.to(device)
    labels = torch.tensor(queries.labels, dtype=torch.long, device=emb.device)
    return QuerySet(emb, labels, queries.texts, queries.describe())


def check_query_set(queries: QuerySet, gallery: Gallery) -> None:
    """A query set in the gallery's space (same width, same device)."""
    if not isinstance(queries, QuerySet):
        raise AdvrankError(f"queries must be a QuerySet (embed_text_queries), got "
                           f"{type(queries).__name__}")
    if queries.embeddings.shape[1] != gallery.embeddings.shape[1]:
        raise AdvrankError(f"the queries are {queries.embeddings.shape[1]}-d, the gallery "
                           f"{gallery.embeddings.shape[1]}-d")


def query_retrieval(queries: QuerySet, gallery: Gallery,
                    ks: Sequence[int] = (1, 2, 4, 8)) -> dict[str, Any]:
    """Text-to-image retrieval quality: Recall@K and mAP (%) of the labelled queries against
    the gallery's class labels (unlabelled texts left out, and counted)."""
    check_query_set(queries, gallery)
    keep = (queries.labels != UNLABELLED).nonzero().squeeze(1)
    if keep.numel() == 0:
        raise AdvrankError("no query names a class, so retrieval quality cannot be measured "
                           "(give classes after a tab in the query file)")
    figures = query_metrics(queries.embeddings[keep], queries.labels[keep], gallery.embeddings,
                            gallery.labels, gallery.distance, ks)
    return {**figures, "unlabelled": len(queries) - int(keep.numel())}


def moderation_pools(queries: QuerySet, gallery: Gallery, top_fraction: float) -> torch.Tensor:
    """``[Q, N]`` bool: whether gallery member x is in the top ``top_fraction`` of query q's
    ranking list (the "moderation" texts of x are the q holding it)."""
    n = len(gallery)
    pool = top_pool_size(n, top_fraction)
    top = nearest_neighbors(queries.embeddings, gallery.embeddings, pool, gallery.distance)
    held = torch.zeros(len(queries), n, dtype=torch.bool, device=top.device)
    return held.scatter_(1, top, True).cpu()


def pick_columns(allowed: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k random distinct columns ``[T, k]`` among the True entries of each row of
    ``allowed [T, Q]`` (each row holds at least k)."""
    scores = torch.rand(allowed.shape, generator=gen).masked_fill(~allowed, 2.0)
    return scores.argsort(dim=1)[:, :k]


def eligible_candidates(queries: QuerySet, gallery: Gallery, k: int, from_top: bool,
                        top_fraction: float) -> int:
    """How many gallery members §4 may draw as candidates against ``queries``: all of them
    ("+"), or those held in the top ``top_fraction`` of at least k texts ("-")."""
    if not from_top:
        return len(gallery)
    return int((moderation_pools(queries, gallery, top_fraction).sum(0) >= k).sum())


def draw_text_targets(queries: QuerySet, gallery: Gallery, k: int, num_attacks: int,
                      gen: torch.Generator, from_top: bool, top_fraction: float,
                      size_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """§4 with text queries: ``(anchors [T], targets [T, k])``. "+": T candidates drawn as
    for picture queries, each with k random texts of the set; "-": T candidates among the
    members held in the top ``top_fraction`` of at least k texts, each with k of those."""
    if k > len(queries):
        raise AdvrankError(f"{size_name} = {k} is larger than the query set "
                           f"({len(queries)} texts)")
    n = len(gallery)
    if not from_top:
        anchors = draw_anchors(n, num_attacks, gen)
        allowed = torch.ones(num_attacks, len(queries), dtype=torch.bool)
        return anchors, pick_columns(allowed, k, gen)
    held = moderation_pools(queries, gallery, top_fraction)  # [Q, N]
    eligible = (held.sum(0) >= k).nonzero().squeeze(1)
    if eligible.numel() < num_attacks:
        how_many = f"only {eligible.numel()}" if eligible.numel() else "no"
        fix = f"lower the number of attacks to {eligible.numel()}, " if eligible.numel() else ""
        raise AdvrankError(
            f"{how_many} gallery items are in the top {top_fraction:.0%} of at least "
            f"{size_name} = {k} of the {len(queries)} texts, {num_attacks} CA- attacks need "
            f"as many; {fix}lower {size_name}, or give more texts")
    anchors = eligible[torch.randperm(eligible.numel(), generator=gen)[:num_attacks]]
    return anchors, pick_columns(held[:, anchors].T, k, gen)
