"""The maximum-embedding-shift attack of §3.3: move f(x + r) as far from f(x) as the threat
model allows. It drives the EST defense (Eq. 13) and Fig. 2's robustness measure, and is the
attack kind ``ES`` (robrank's untargeted embedding shift), which needs no target set: it is
scored by the shift reached (robrank's ES:D), by Recall@1 after it (ES:R) and by how far x~
drifts in the ranking of its own clean copy (the audit's figure)."""

from __future__ import annotations

import torch
from torch import nn

from advrank.attacks.base import QueryKind, RankingObjective, RankingView, recall_at_1
from advrank.attacks.params import Param
from advrank.attacks.pgd import frozen, keyed_noise, pgd
from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import check_finite, check_images
from advrank.core.distances import Distance, get_distance
from advrank.core.gallery import Gallery
from advrank.core.metrics import count_closer
from advrank.registry import ATTACKS


class EmbeddingShiftObjective(RankingObjective):
    """Maximise d(f(x + r), f(x)), i.e. minimise -d; ``reference [B, D]`` = f(x).

    d has zero gradient at r = 0 (both for 1 - cos and for the clamped Euclidean norm), so this
    attack needs a random start.
    """

    def __init__(self, reference: torch.Tensor, distance: Distance):
        self.reference, self.distance = reference.detach(), distance

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        return -self.distance.paired(emb, self.reference)


ES_STARTS = ("random", "nudge")
NUDGE = 1e-4  # relative to the embedding's rms


@ATTACKS.register("ES", aliases=("es",))
class EmbeddingShiftAttack(QueryKind):
    """``ES``: the query q moves as far from its clean embedding f(q) as the budget allows.

    Figures ``[B]``: ``shift`` = d(f(q~), f(q)) (robrank's ES:D: 1 - cos for cosine, the L2
    distance for Euclidean), ``recall@1`` (robrank's ES:R, %: q~'s nearest gallery member
    other than q's own clean copy shares q's label) and ``rank`` (R(q~, q), %: the share of X
    closer to q~ than q's own clean copy; 0 before the attack).

    d has zero gradient at r = 0, so PGD cannot start at the clean image as it is.
    ``start="random"`` (the default) starts at a random point of the ball, the stronger
    attack; ``start="nudge"`` starts at the clean image and moves away from a reference nudged
    by a hair (robrank adds 1e-7 to its unit-norm f(q); here f(q) + 1e-4 * rms(f(q)), as our
    embeddings are not normalised), which is what the ERS profiles use.
    """

    name = "ES"
    parameters = (Param("start", str, "random", "where PGD starts: a random point of the ball "
                        "(the stronger attack) or the clean image, moving away from a nudged "
                        "reference (robrank's ERS profiles)", choices=ES_STARTS),)
    needs_clean = True
    headline = "shift"
    direction = "up"
    unit = ""
    ranked = True  # R(q~, q): how far q~ drifts in the list of its own clean copy
    query_only = True  # as an untargeted top-k disruption (:meth:`query_score`)
    description = "untargeted embedding shift: move q's embedding away from its clean one"

    @property
    def random_start(self) -> bool:  # type: ignore[override]  # computed from the options
        return self.options["start"] == "random"

    def objective(self, embeddings, distance, part, clean=None):
        if clean is None:  # the clean images are gallery members: their stored embeddings
            clean = embeddings[part.anchors.to(embeddings.device)]
        if self.options["start"] == "nudge":  # a hair off f(q), so d has a gradient at r = 0
            clean = clean + NUDGE * clean.pow(2).mean(-1, keepdim=True).sqrt()
        return EmbeddingShiftObjective(clean, distance)

    @torch.no_grad()
    def measure(self, gallery: Gallery, part, emb: torch.Tensor):
        g_emb, dist = gallery.embeddings, gallery.distance
        anchors = part.anchors.to(g_emb.device)
        # a distance is >= 0; the clean embedding recomputed beside the stored one can land a
        # rounding error below it (-6e-8 for cosine), which the result store rightly refuses
        shift = dist.paired(emb, g_emb[anchors]).clamp_min(0.0)
        ranks = count_closer(emb, shift[:, None], g_emb, dist, targets=anchors[:, None])[:, 0]
        return {"shift": shift, "recall@1": recall_at_1(gallery, part, emb),
                "rank": 100.0 * ranks.float() / len(gallery)}

    def query_score(self, gallery: Gallery, part, feedback, ask):
        """The untargeted top-k disruption from an oracle's feedback: sink q's own clean copy
        in q~'s list (R(q~, q) at full feedback; at top-k, q and its clean top-k out of the
        visible list; see :mod:`advrank.attacks.feedback`)."""
        from advrank.attacks.feedback import feedback_score

        anchors = part.anchors.cpu()[:, None]
        return feedback_score(False, gallery, anchors, anchors[:, :0], feedback, ask)

    def view(self, gallery: Gallery, part, emb: torch.Tensor) -> RankingView:
        """The list of x~ over all of X, its clean copy x included and highlighted."""
        return RankingView(emb[0], None, None, [], [int(part.anchors[0])])


def shift_distance(
    model: nn.Module, images: torch.Tensor, distance: Distance | str, eps: float,
    steps: int | None = None, step_size: float | None = None,
    generator: torch.Generator | None = None, batch_size: int = 256, seed: int | None = None,
) -> torch.Tensor:
    """``d(f(x + r*), f(x)) [B]`` reached by the max-shift attack r* on images
    ``[B, C, H, W]`` (on the model's device), with the paper's alpha/eta unless given.

    With ``seed``, image i's random start depends only on (seed, i), so the figures do not
    depend on ``batch_size``; otherwise ``generator`` draws the starts batch by batch.
    """
    check_images(images)
    distance = get_distance(distance)
    if eps == 0:
        return torch.zeros(images.shape[0], device=images.device)
    threat = LinfThreatModel(float(eps), step_size, steps, random_start=True)
    out = []
    with frozen(model):
        for s in range(0, images.shape[0], batch_size):
            x = images[s : s + batch_size]
            noise = None
            if seed is not None:
                noise = keyed_noise(seed, torch.arange(s, s + x.shape[0]), x.shape[1:])
            with torch.no_grad():
                reference = model(x)
            adv = pgd(model, x, EmbeddingShiftObjective(reference, distance), threat, generator,
                      noise=noise)
            with torch.no_grad():
                out.append(check_finite(distance.paired(model(adv), reference),
                                        "the embedding shift"))
    return torch.cat(out)
