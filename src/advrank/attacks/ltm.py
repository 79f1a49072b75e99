"""Learning-to-misrank attack (LTM; Eq. 1 of Wang et al., arXiv 2004.04199, as robrank uses
it): perturb a query q so that its whole ranking flips, every negative (another label) ahead
of every positive (q's label, q's own copy left out):

L_LTM(q~) = [ max_{n in N(q)} d(q~, n) - min_{p in P(q)} d(q~, p) ]_+ .

Scored by Recall@1 after the attack (robrank's "LTM", %; the attack drives it down), with q's
own clean copy left out of the ranking.

Which positives: robrank's code means to leave q's own clean copy out of P(q), but its
``mask.scatter`` (not ``scatter_``) leaves the mask unchanged, so the copy stays in P(q) and
the nearest positive starts as the copy itself, at distance 0. ``own_copy_positive=False``
(the default) is the textbook loss, with the copy left out of P(q); ``True`` keeps robrank's
behaviour, which the ERS profiles use so that ERS stays comparable with its published rows.
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


class MisrankObjective(RankingObjective):
    """L_LTM for B queries: ``anchors [B]`` are their gallery indices (their own clean copies,
    in P(q) when ``own_copy_positive``), ``labels [B, N]`` the gallery labels as seen by each
    (one broadcast row each).

    The max and min are taken without gradient; autograd then runs through the two paired
    distances they select, which is the (sub)gradient of the max/min form.
    """

    def __init__(self, gallery: torch.Tensor, distance: Distance, anchors: torch.Tensor,
                 labels: torch.Tensor, own_copy_positive: bool = False):
        self.gallery, self.distance = gallery, distance
        self.prepared = distance.prepare(gallery)
        rows = torch.arange(anchors.numel(), device=gallery.device)
        own = labels[rows, anchors][:, None]  # [B, 1]
        self.pos = labels == own  # [B, N]
        if not own_copy_positive:
            self.pos[rows, anchors] = False
        self.neg = labels != own
        self.valid = self.pos.any(1) & self.neg.any(1)  # [B]: both sets non-empty

    def _pick(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The farthest negative and the nearest positive of each query ``([B], [B])``."""
        with torch.no_grad():
            d = self.distance.pairwise_prepared(emb, self.prepared)  # [B, N]
            far_neg = d.masked_fill(~self.neg, float("-inf")).argmax(1)
            near_pos = d.masked_fill(~self.pos, float("inf")).argmin(1)
        return far_neg, near_pos

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        far_neg, near_pos = self._pick(emb)
        gap = (self.distance.paired(emb, self.gallery[far_neg])
               - self.distance.paired(emb, self.gallery[near_pos]))
        return torch.where(self.valid, torch.relu(gap), torch.zeros_like(gap))


@ATTACKS.register("LTM", aliases=("ltm",))
class LearningToMisrank(QueryKind):
    """``LTM``: ``extra["labels"]`` is the gallery's label vector broadcast to ``[T, N]`` (a
    view: no memory per attack), so each batch of queries knows its positives and negatives."""

    name = "LTM"
    parameters = (Param("own_copy_positive", bool, False, "count q's own clean copy among "
                        "its positives (robrank's reading) instead of leaving it out"),)
    headline = "recall@1"
    direction = "down"
    description = "learning to misrank: rank all of q's negatives ahead of its positives"

    def draw(self, gallery: Gallery, anchors: torch.Tensor, gen: torch.Generator) -> Selection:
        labels = gallery.labels.cpu()
        return Selection(anchors, extra={"labels": labels.expand(anchors.numel(), -1)})

    def objective(self, embeddings, distance, part, clean=None):
        labels = part.extra.get("labels")
        if labels is None or (part.anchors < 0).any():
            raise AdvrankError("LTM needs a selection made by its select() (the queries' "
                               "gallery indices and the gallery labels)")
        dev = embeddings.device
        return MisrankObjective(embeddings, distance, part.anchors.to(dev), labels.to(dev),
                                self.options["own_copy_positive"])

    @torch.no_grad()
    def measure(self, gallery: Gallery, part: Selection, emb: torch.Tensor):
        return {"recall@1": recall_at_1(gallery, part, emb)}
