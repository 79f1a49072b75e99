"""The relative order attack (Zhou et al., ICCV 2021, "Practical Relative Order Attack in Deep
Ranking"; the authors' code is github.com/cdluminate/advorder): perturb a query q so that k
chosen members of its top list appear in an order the attacker picked, with as little change
to the rest of the list as it takes.

Selection: q random from X (§4's anchors); the k candidates C are the first k of q's clean
list (q's own clean copy left out), as advorder's black-box attack takes them, or, with
``pool``, k drawn at random from q's clean top-``pool`` and kept in their clean order; the
target order is a random permutation of C (seeded, one per attack; advorder's ``randperm``,
which may be the identity). ``targets [T, k]`` holds C in the target order: targets[:, 0] is
to come first.

Figures ``[B]`` (measured on the whole gallery, q's own clean copy left out):

* ``tau``: Kendall's tau between the target order and the order in which the k candidates
  appear in q~'s ranking, (concordant - discordant pairs) / (k (k - 1) / 2), in [-1, 1]; the
  headline (driven up). Before the attack it is the tau of the random permutation itself.
* ``src``: advorder's Short-range Ranking Correlation at the visible depth N = ``depth`` (the
  paper's tau_N): as tau, but a pair with a candidate outside q~'s top N scores -1.
* ``position``: the candidates' mean 0-based position in q~'s ranking (advorder's mean rank;
  its change is the rank shift the attack costs) and ``rank``: the same as a normalized rank,
  % of |X|.

Query-only objective (:meth:`OrderAttack.query_score`): minus the SRC of the oracle's answer,
computed from the ids alone, so it works at every feedback level (at ``full`` it is tau).

White-box objective (:class:`OrderObjective`): advorder's triplet-style inequality chain,
the mean over ordered pairs (i before j in the target order) of [d(q~, t_i) - d(q~, t_j)]_+.
"""

from __future__ import annotations

import torch

from advrank.attacks.base import (
    AttackKind,
    QueryScore,
    RankingObjective,
    RankingView,
    select_anchors,
    topk_positions,
)
from advrank.attacks.params import Param
from advrank.attacks.selection import Selection
from advrank.core.gallery import Gallery
from advrank.core.metrics import count_closer, nearest_neighbors
from advrank.errors import AdvrankError
from advrank.oracles.base import Answer
from advrank.registry import ATTACKS


def pair_agreement(pos: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]``: the mean over the k (k - 1) / 2 pairs i < j of ``pos [B, k]`` (the positions of
    the targets, listed in the target order) of +1 when t_i comes before t_j, -1 when after,
    0 on a tie: Kendall's tau against the target order. With ``visible [B, k]`` (bool), a pair
    with an invisible member scores -1: advorder's SRC (Short-range Ranking Correlation)."""
    k = pos.shape[1]
    if k < 2:
        raise AdvrankError(f"a relative order needs at least 2 candidates, got {k}")
    sign = torch.sign(pos[:, None, :].float() - pos[:, :, None].float())  # [B, i, j]
    if visible is not None:
        both = visible[:, :, None] & visible[:, None, :]
        sign = torch.where(both, sign, -1.0)
    upper = torch.ones(k, k, dtype=torch.bool, device=pos.device).triu(1)
    return sign[:, upper].mean(1)


def short_range_correlation(answer: Answer, targets: torch.Tensor,
                            exclude: torch.Tensor) -> torch.Tensor:
    """advorder's SRC ``[N]`` of answers ``ids [N, L]`` for ``targets [N, k]`` (in the target
    order), the members ``exclude [N, e]`` (q's own copy) and padding dropped from the
    visible list: the targets' pairwise order agreement, a pair with a target out of sight
    counted as discordant."""
    depth = answer.ids.shape[1]
    pos = topk_positions(answer.ids, targets, exclude, depth)
    return pair_agreement(pos, pos < depth)


class OrderObjective(RankingObjective):
    """advorder's white-box loss for B queries: ``targets [B, k, D]`` (the candidates'
    embeddings in the target order); ``[B]`` = mean over pairs i < j of
    [d(q~, t_i) - d(q~, t_j)]_+ (t_i should be the nearer)."""

    def __init__(self, targets: torch.Tensor, distance):
        self.targets, self.distance = targets.detach(), distance
        k = targets.shape[1]
        self.upper = torch.ones(k, k, dtype=torch.bool, device=targets.device).triu(1)

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        d = self.distance.paired(emb[:, None, :], self.targets)  # [B, k]
        gap = torch.relu(d[:, :, None] - d[:, None, :])  # [B, i, j]: d_i - d_j
        return gap[:, self.upper].mean(1)


@ATTACKS.register("ORDER", aliases=("order", "OA", "oa"))
class OrderAttack(AttackKind):
    """``ORDER``: see the module docstring. Size: k, the number of candidates (>= 2)."""

    name = "ORDER"
    size_name = "k"
    parameters = (
        Param("pool", int, None, "draw the k candidates at random from q's clean top-POOL "
              "(kept in their clean order) instead of taking the first k (the default, as "
              "advorder's black-box attack)", low=2, high=10**9),
        Param("depth", int, 10, "visible list length N at which the measured SRC (advorder's "
              "tau_N) is reported", low=1, high=10**9),
    )
    headline = "tau"
    direction = "up"
    unit = ""
    query_only = True
    description = ("relative order attack (advorder): put k of q's top candidates in a "
                   "chosen order")

    def check_fits(self, k: int, num_attacks: int, n: int) -> None:
        super().check_fits(k, num_attacks, n)
        if k < 2:
            raise AdvrankError(f"{self.name} reorders at least 2 candidates, got k = {k}")
        pool = self.options["pool"]
        if pool is not None and not k <= pool <= n - 1:
            raise AdvrankError(f"pool = {pool} must hold the k = {k} candidates and fit the "
                               f"{n - 1} other gallery items")

    def select(self, gallery: Gallery, k: int, num_attacks: int, seed: int = 0) -> Selection:
        anchors, gen = select_anchors(self, gallery, k, num_attacks, seed)
        pool = self.options["pool"] or k
        emb = gallery.embeddings
        top = nearest_neighbors(emb[anchors.to(emb.device)], emb, pool, gallery.distance,
                                anchors.to(emb.device)).cpu()  # [T, pool], nearest first
        if pool > k:  # k random members, kept in their clean order
            cols = torch.rand(top.shape, generator=gen).argsort(1)[:, :k].sort(1).values
            top = top.gather(1, cols)
        perm = torch.rand(top.shape, generator=gen).argsort(1)  # the target order
        return Selection(anchors, top.gather(1, perm))

    def objective(self, embeddings, distance, part, clean=None):
        return OrderObjective(embeddings[part.targets.to(embeddings.device)], distance)

    @torch.no_grad()
    def measure(self, gallery: Gallery, part: Selection, emb: torch.Tensor):
        g_emb, dist = gallery.embeddings, gallery.distance
        anchors, targets = part.anchors.to(g_emb.device), part.targets.to(g_emb.device)
        thr = dist.paired(emb[:, None, :], g_emb[targets])  # d(q~, t) [B, k]
        pos = count_closer(emb, thr, g_emb, dist, exclude=anchors[:, None], targets=targets)
        visible = pos < self.options["depth"]
        return {"tau": pair_agreement(pos), "src": pair_agreement(pos, visible),
                "position": pos.float().mean(1),
                "rank": 100.0 * pos.float().mean(1) / len(gallery)}

    def query_score(self, gallery: Gallery, part: Selection, feedback, ask):
        """Minus advorder's SRC of each answer (ids only; no further queries)."""
        targets, exclude = part.targets.cpu(), part.anchors.cpu()[:, None]

        def score(answer: Answer, rows: torch.Tensor) -> torch.Tensor:
            return -short_range_correlation(answer, targets[rows], exclude[rows])

        return QueryScore(score)

    def view(self, gallery: Gallery, part: Selection, emb: torch.Tensor) -> RankingView:
        """The list of q~ itself (q left out), the candidates highlighted (target order)."""
        return RankingView(emb[0], None, None, [int(part.anchors[0])],
                           part.targets[0].tolist())


__all__ = ["OrderAttack", "OrderObjective", "pair_agreement", "short_range_correlation"]
