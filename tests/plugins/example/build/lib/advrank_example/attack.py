"""An attack kind: push a query away from its own nearest neighbour (no size parameter).

Selection: q random from X; its target is its nearest other gallery item. Objective: minimise
-d(q~, target). Figure: the target's normalized rank in q~'s list (%), driven up.
"""

import torch

from advrank.attacks.base import AttackKind, RankingObjective, select_anchors
from advrank.attacks.selection import Selection
from advrank.core.metrics import count_closer, nearest_neighbors
from advrank.registry import ATTACKS


class AwayObjective(RankingObjective):
    def __init__(self, targets, distance):
        self.targets, self.distance = targets, distance  # [B, D]

    def __call__(self, emb):
        return -self.distance.paired(emb, self.targets)


@ATTACKS.register("AWAY")
class AwayFromNeighbour(AttackKind):
    name = "AWAY"
    size_name = None
    direction = "up"
    description = "push a query away from its nearest neighbour"

    def select(self, gallery, k, num_attacks, seed=0):
        anchors, _ = select_anchors(self, gallery, k, num_attacks, seed)
        emb = gallery.embeddings
        top1 = nearest_neighbors(emb[anchors], emb, 1, gallery.distance, anchors)
        return Selection(anchors, top1.cpu())

    def objective(self, embeddings, distance, part, clean=None):
        return AwayObjective(embeddings[part.targets[:, 0].to(embeddings.device)], distance)

    @torch.no_grad()
    def measure(self, gallery, part, emb):
        g, dist = gallery.embeddings, gallery.distance
        targets = part.targets.to(g.device)
        thr = dist.paired(emb[:, None, :], g[targets])
        ranks = count_closer(emb, thr, g, dist, exclude=part.anchors.to(g.device)[:, None],
                             targets=targets)
        return {"rank": 100.0 * ranks[:, 0].float() / len(gallery)}
