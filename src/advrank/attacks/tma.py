"""Targeted mismatch attack (TMA; Tolias et al., ICCV 2019, as robrank uses it): perturb a
query q so that its embedding points where a random other item's does.

L_TMA(q~) = 1 - cos(f(q~), f(t)),  t drawn at random from X \\ {q}.

Scored by the cosine similarity cos(f(q~), f(t)) reached (robrank's "TMA"; the attack drives
it up, towards 1). The cosine is used whatever the model's ranking distance, as in robrank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advrank.attacks.base import QueryKind, RankingObjective, recall_at_1
from advrank.attacks.selection import Selection, random_others
from advrank.core.gallery import Gallery
from advrank.registry import ATTACKS


class TargetedMismatchObjective(RankingObjective):
    """``1 - cos(emb, targets)`` per attack; ``targets [B, D]`` are the target embeddings."""

    def __init__(self, targets: torch.Tensor):
        self.targets = targets.detach()

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        return 1.0 - F.cosine_similarity(emb, self.targets, dim=-1)


@ATTACKS.register("TMA", aliases=("tma",))
class TargetedMismatch(QueryKind):
    """``TMA``: targets ``[T, 1]`` are one random other gallery member per query (robrank draws
    from all of X, the query included; the query itself is left out here, it would be a no-op).

    Figures ``[B]``: ``cosine`` = cos(f(q~), f(t)) and ``recall@1`` (%).
    """

    name = "TMA"
    headline = "cosine"
    direction = "up"
    unit = ""
    description = "targeted mismatch: move q's embedding onto a random other item's"

    def draw(self, gallery: Gallery, anchors: torch.Tensor, gen: torch.Generator) -> Selection:
        return Selection(anchors, random_others(anchors, len(gallery), 1, gen))

    def objective(self, embeddings, distance, part, clean=None):
        return TargetedMismatchObjective(embeddings[part.targets[:, 0].to(embeddings.device)])

    @torch.no_grad()
    def measure(self, gallery: Gallery, part: Selection, emb: torch.Tensor):
        target = gallery.embeddings[part.targets[:, 0].to(gallery.device)]
        return {"cosine": F.cosine_similarity(emb, target, dim=-1),
                "recall@1": recall_at_1(gallery, part, emb)}
