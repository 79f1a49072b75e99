"""The maximum-embedding-shift attack of §3.3: move f(x + r) as far from f(x) as the threat
model allows. It drives the EST defense (Eq. 13) and Fig. 2's robustness measure, and is the
attack kind ``ES`` (which needs no target set: it measures how far x~ drifts in the ranking
of its own clean copy)."""

from __future__ import annotations

import torch
from torch import nn

from advrank.attacks.base import AttackKind, RankingObjective, RankingView, select_anchors
from advrank.attacks.pgd import frozen, keyed_noise, pgd
from advrank.attacks.selection import Selection
from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import check_finite, check_images
from advrank.core.distances import Distance, get_distance
from advrank.core.gallery import Gallery
from advrank.core.metrics import count_closer, nearest_neighbors
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


@ATTACKS.register("ES", aliases=("es",))
class EmbeddingShift(AttackKind):
    """ES: push f(x~) as far from f(x) as eps allows (§3.3), for random members x of X.

    Measures: ``shift`` (d(f(x~), f(x))), ``rank`` (R(x~, x): the % of X closer to x~ than x's
    own clean copy; 0 before the attack) and ``recall@1`` (x~'s nearest other member shares
    x's label). The size k is not used.
    """

    name = "ES"
    size_name = None
    needs_clean = True
    random_start = True
    direction = "up"
    description = "move an image's embedding as far from its clean one as possible (§3.3)"

    def select(self, gallery: Gallery, k: int, num_attacks: int, seed: int = 0) -> Selection:
        anchors, _ = select_anchors(self, gallery, k, num_attacks, seed)
        return Selection(anchors)

    def objective(self, embeddings, distance, part, clean=None):
        if clean is None:
            clean = embeddings[part.anchors.to(embeddings.device)]
        return EmbeddingShiftObjective(clean, distance)

    @torch.no_grad()
    def measure(self, gallery: Gallery, part: Selection, emb: torch.Tensor):
        g_emb, dist, labels, n = gallery.embeddings, gallery.distance, gallery.labels, len(gallery)
        anchors = part.anchors.to(g_emb.device)
        shift = dist.paired(emb, g_emb[anchors])
        ranks = count_closer(emb, shift[:, None], g_emb, dist, targets=anchors[:, None])[:, 0]
        nn1 = nearest_neighbors(emb, g_emb, 1, dist, anchors)[:, 0]
        return {"rank": 100.0 * ranks.float() / n, "shift": shift,
                "recall@1": 100.0 * (labels[nn1] == labels[anchors]).float()}

    def view(self, gallery: Gallery, part: Selection, emb: torch.Tensor) -> RankingView:
        """The list of x~ over all of X, its clean copy x included and highlighted."""
        return RankingView(emb[0], None, None, [], [int(part.anchors[0])])
