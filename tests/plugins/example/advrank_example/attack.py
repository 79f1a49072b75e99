"""An attack kind: push a query away from (or pull it toward) one of its nearest neighbours
(no size parameter).

Selection: q random from X; its target is its ``neighbour``-th nearest other gallery item.
Objective: minimise -d(q~, target) (``toward``: +d). Figure: the target's normalized rank in
q~'s list (%), driven up (down with ``toward``).

Its two hyper-parameters are declared once, as :class:`~advrank.attacks.params.Param`: the
constructor takes them, every result records them, and the ``advrank`` commands get
``--neighbour`` and ``--toward`` flags without any change to the CLI.
"""

import torch

from advrank.attacks.base import AttackKind, RankingObjective, select_anchors
from advrank.attacks.params import Param
from advrank.attacks.selection import Selection
from advrank.core.metrics import count_closer, nearest_neighbors
from advrank.registry import ATTACKS


class AwayObjective(RankingObjective):
    def __init__(self, targets, distance, sign):
        self.targets, self.distance, self.sign = targets, distance, sign  # [B, D]

    def __call__(self, emb):
        return self.sign * self.distance.paired(emb, self.targets)


@ATTACKS.register("AWAY")
class AwayFromNeighbour(AttackKind):
    name = "AWAY"
    size_name = None
    direction = "up"  # the default's (away); with toward the rank goes down
    description = "push a query away from its nearest neighbour"
    parameters = (
        Param("neighbour", int, 1, "which neighbour is the target (1: the nearest)", low=1,
              high=50),
        Param("toward", bool, False, "pull the query toward the target instead"),
    )

    def select(self, gallery, k, num_attacks, seed=0):
        anchors, _ = select_anchors(self, gallery, k, num_attacks, seed)
        emb, nth = gallery.embeddings, self.options["neighbour"]
        near = nearest_neighbors(emb[anchors], emb, nth, gallery.distance, anchors)
        return Selection(anchors, near[:, nth - 1 : nth].cpu())

    def objective(self, embeddings, distance, part, clean=None):
        return AwayObjective(embeddings[part.targets[:, 0].to(embeddings.device)], distance,
                             1.0 if self.options["toward"] else -1.0)

    @torch.no_grad()
    def measure(self, gallery, part, emb):
        g, dist = gallery.embeddings, gallery.distance
        targets = part.targets.to(g.device)
        thr = dist.paired(emb[:, None, :], g[targets])
        ranks = count_closer(emb, thr, g, dist, exclude=part.anchors.to(g.device)[:, None],
                             targets=targets)
        return {"rank": 100.0 * ranks[:, 0].float() / len(gallery)}
