"""Guided top-k targeted attack (GTT, robrank): perturb a query q so that its clean top-1
result m (q's own copy left out) drops out of its top ranks.

L_GTT(q~) = L_QA-(q~, C = {m}; X)  (Eq. 9 with m = 1, no SP term), i.e. every gallery member x
is pushed ahead of m: sum_x [d(q~, x) - d(q~, m)]_+.

Scored by ``retain@4``: the % of queries whose m is still among the 4 nearest members of q~
(robrank's "GTT"; the attack drives it down). ``retain@1`` (m still first) and ``recall@1``
are measured too.
"""

from __future__ import annotations

import torch

from advrank.attacks.base import QueryKind, neighbors_of_query, recall_at_1
from advrank.attacks.qa import QueryObjective
from advrank.attacks.selection import Selection
from advrank.core.gallery import Gallery
from advrank.core.metrics import nearest_neighbors
from advrank.registry import ATTACKS

RETAIN_K = 4


@ATTACKS.register("GTT", aliases=("gtt",))
class GuidedTopTargeted(QueryKind):
    """``GTT``: targets ``[T, 1]`` are each query's clean top-1 (its own copy left out)."""

    name = "GTT"
    headline = f"retain@{RETAIN_K}"
    direction = "down"
    description = "guided top-k targeted: push q's top-1 result out of its top 4"

    def draw(self, gallery: Gallery, anchors: torch.Tensor, gen: torch.Generator) -> Selection:
        emb = gallery.embeddings
        own = anchors.to(emb.device)
        top1 = nearest_neighbors(emb[own], emb, 1, gallery.distance, own)
        return Selection(anchors, top1.cpu())

    def objective(self, embeddings, distance, part, clean=None):
        return QueryObjective(False, part.targets.to(embeddings.device), embeddings, distance)

    @torch.no_grad()
    def measure(self, gallery: Gallery, part: Selection, emb: torch.Tensor):
        top = neighbors_of_query(gallery, part, emb, RETAIN_K)  # [B, 4]
        m = part.targets.to(top.device)  # [B, 1]
        return {f"retain@{RETAIN_K}": 100.0 * (top == m).any(1).float(),
                "retain@1": 100.0 * (top[:, :1] == m).any(1).float(),
                "recall@1": recall_at_1(gallery, part, emb, top[:, 0])}
