"""Guided top-1 mismatch attack (GTM, robrank): perturb a query q so that its top-1 result
changes class. With l the label of q's clean top-1 result (q's own copy left out), the target
u is q's nearest gallery member whose label is not l, and PGD pulls q~ onto it:

L_GTM(q~) = d(f(q~), f(u)).

Scored by Recall@1 after the attack (robrank's "GTM", %; the attack drives it down).

``target``: ``"nearest"`` (the default) is u as robrank's comment ("top-1 unmatching") means
it. robrank's code picks u's *position among the members of other labels* (``argrank[i,
mask].argmin()``) and then uses that position as a gallery index, so the item it pulls towards
is u' = the member at index u - #{j < u : label j = l}: an item unrelated to q (of another
label than l in most cases). ``"robrank"`` reproduces that choice, so that ERS stays comparable
with robrank's published rows; pulling towards an unrelated far item is a much weaker attack
on a robust model than pulling towards the nearest item of another class.
"""

from __future__ import annotations

import torch

from advrank.attacks.base import QueryKind, RankingObjective, recall_at_1
from advrank.attacks.params import Param
from advrank.attacks.selection import Selection
from advrank.core.distances import Distance
from advrank.core.gallery import Gallery
from advrank.errors import AdvrankError
from advrank.registry import ATTACKS


class PullObjective(RankingObjective):
    """``d(emb, targets)`` per attack with the ranking distance; ``targets [B, D]``."""

    def __init__(self, targets: torch.Tensor, distance: Distance):
        self.targets, self.distance = targets.detach(), distance

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        return self.distance.paired(emb, self.targets)


TARGETS = ("nearest", "robrank")


@torch.no_grad()
def nearest_of_other_class(gallery: Gallery, anchors: torch.Tensor, robrank_index: bool = False,
                           chunk: int = 1024) -> torch.Tensor:
    """``[T]``: for each anchor q, the nearest member u whose label differs from that of q's
    top-1 result l (q's own copy left out), from the clean ranking; with ``robrank_index``, the
    member at index u - #{j < u : label j = l} instead (see the module docstring)."""
    emb, labels, dist = gallery.embeddings, gallery.labels, gallery.distance
    if labels.unique().numel() < 2:
        raise AdvrankError("GTM needs a gallery with at least 2 classes")
    out = []
    for s in range(0, anchors.numel(), chunk):
        own = anchors[s : s + chunk].to(emb.device)
        d = dist.pairwise(emb[own], emb)  # [c, N]
        d[torch.arange(own.numel(), device=d.device), own] = float("inf")
        top_label = labels[d.argmin(1)]  # [c]
        same = labels[None, :] == top_label[:, None]  # [c, N]: members labelled l
        u = d.masked_fill(same, float("inf")).argmin(1)
        if robrank_index:  # u's position among the members not labelled l
            u = u - same.cumsum(1).gather(1, u[:, None])[:, 0]
        out.append(u.cpu())
    return torch.cat(out)


@ATTACKS.register("GTM", aliases=("gtm",))
class GuidedTopMismatch(QueryKind):
    """``GTM``: targets ``[T, 1]`` are u, the nearest member of another class than q's top-1
    (or robrank's u', with ``target="robrank"``)."""

    name = "GTM"
    parameters = (Param("target", str, "nearest", "the item q is pulled onto: its nearest "
                        "member of another class, or robrank's index slip (comparable with "
                        "robrank's published ERS)", choices=TARGETS, flag="gtm-target"),)
    headline = "recall@1"
    direction = "down"
    description = "guided top-1 mismatch: pull q onto its nearest item of another class"

    def draw(self, gallery: Gallery, anchors: torch.Tensor, gen: torch.Generator) -> Selection:
        robrank = self.options["target"] == "robrank"
        return Selection(anchors, nearest_of_other_class(gallery, anchors, robrank)[:, None])

    def objective(self, embeddings, distance, part, clean=None):
        return PullObjective(embeddings[part.targets[:, 0].to(embeddings.device)], distance)

    @torch.no_grad()
    def measure(self, gallery: Gallery, part: Selection, emb: torch.Tensor):
        return {"recall@1": recall_at_1(gallery, part, emb)}
