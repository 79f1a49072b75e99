"""Candidate attacks (§3.1): perturb a candidate c so that it rises (CA+, Eq. 4) or sinks
(CA-, Eq. 7) in the rankings of a set Q of w queries.

L_CA+(c, Q; X) = sum_q sum_x [d(q, c) - d(q, x)]_+ ;  L_CA- = sum_q sum_x [d(q, x) - d(q, c)]_+

Selection (§4): c random from X; CA+ draws Q at random from X \\ {c}, CA- from the top 1% of
c's own ranking list. Measure: R_CA(c) = mean over q of 100 * Rank_X(q, c~) / |X|, where c~
competes with the other candidates, not with its own clean copy.
"""

from __future__ import annotations

import torch

from advrank.attacks.base import AttackKind, RankingObjective, RankingView, select_anchors
from advrank.attacks.selection import Selection, random_others, top_pool_targets
from advrank.core.checks import check_number
from advrank.core.distances import Distance
from advrank.core.gallery import Gallery
from advrank.core.metrics import count_closer, nearest_neighbors
from advrank.registry import ATTACKS


class CandidateObjective(RankingObjective):
    """Eq. 4 (``raise_rank``) or Eq. 7 for B attacks; queries ``[B, w, D]`` are each attack's Q.

    The distances ``d(q, x)`` are constant, so they are computed once per batch, sorted, and
    prefix-summed (``[B, w, N]`` each: the fixed memory of a batch of CA attacks is 8·B·w·N
    bytes in float32, ``--batch-size`` bounds it). With a = d(q, c) and k = #{x : d(q, x) < a},
    the CA+ sum over X is ``a * k - (sum of the k smallest d(q, x))``, and its derivative in a is
    k, exactly what the hinge's autograd gives; CA- is the mirror image. A PGD step thus costs
    a binary search per (attack, query) instead of a pass over the whole gallery.
    """

    def __init__(self, raise_rank: bool, queries: torch.Tensor, gallery: torch.Tensor,
                 distance: Distance, chunk: int = 4096):
        self.raise_rank, self.queries, self.distance = raise_rank, queries, distance
        b, w, d = queries.shape
        flat = queries.reshape(b * w, d)
        with torch.no_grad():
            d_qx = torch.cat(
                [distance.pairwise(flat, gallery[s : s + chunk])
                 for s in range(0, gallery.shape[0], chunk)], dim=1,
            ).reshape(b, w, -1)
            self.sorted = d_qx.sort(dim=-1).values.contiguous()  # [B, w, N]
            del d_qx
            # prefix sums for the loss *value* only (PGD uses the exact integer derivative k)
            cums = self.sorted.cumsum(dim=-1)
            self.prefix = torch.nn.functional.pad(cums, (1, 0))  # [B, w, N + 1], prefix[0] = 0
        self.n = self.sorted.shape[-1]

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        a = self.distance.paired(self.queries, emb[:, None, :])  # [B, w]: d(q, c)
        key = a.detach().to(self.sorted.dtype).unsqueeze(-1).contiguous()
        if self.raise_rank:  # hinge active for d(q, x) < a
            k = torch.searchsorted(self.sorted, key, right=False)  # [B, w, 1]
            below = self.prefix.gather(-1, k).squeeze(-1)
            loss = a * k.squeeze(-1) - below
        else:  # CA-: hinge active for d(q, x) > a
            k = torch.searchsorted(self.sorted, key, right=True)
            above = self.prefix[..., -1] - self.prefix.gather(-1, k).squeeze(-1)
            loss = above - a * (self.n - k.squeeze(-1))
        return loss.sum(dim=1)


class CandidateAttack(AttackKind):
    """CA+ / CA-: the adversarial image is the candidate c; targets ``[T, w]`` are Q."""

    size_name = "w"
    params = {"top_fraction": 0.01}
    raise_rank = True

    def validate(self, options):
        check_number(options["top_fraction"], "top fraction", low=0.0, low_open=True, high=1.0)
        return options

    def select(self, gallery: Gallery, k: int, num_attacks: int, seed: int = 0) -> Selection:
        anchors, gen = select_anchors(self, gallery, k, num_attacks, seed)
        if self.raise_rank:
            targets = random_others(anchors, len(gallery), k, gen)
        else:
            targets = top_pool_targets(gallery, anchors, k, gen, self.options["top_fraction"],
                                       self.size_name)
        return Selection(anchors, targets)

    def objective(self, embeddings, distance, part, clean=None):
        return CandidateObjective(self.raise_rank, embeddings[part.targets.to(embeddings.device)],
                                  embeddings, distance)

    @torch.no_grad()
    def measure(self, gallery: Gallery, part: Selection, emb: torch.Tensor):
        """``rank [B]`` (R_CA, %) and ``recall@1 [B]``: the % of the attack's queries whose
        top-1 result (c~ if ranked first, else the nearest other member) shares their label."""
        g_emb, dist, labels, n = gallery.embeddings, gallery.distance, gallery.labels, len(gallery)
        anchors, targets = part.anchors.to(g_emb.device), part.targets.to(g_emb.device)
        b, k = targets.shape
        q = g_emb[targets].reshape(b * k, -1)  # every (attack, query) pair is one ranking list
        c_rep = anchors.repeat_interleave(k)
        thr = dist.paired(q, emb.repeat_interleave(k, 0))[:, None]  # d(q, c~) [B*k, 1]
        excl = torch.stack([targets.reshape(-1), c_rep], 1)  # the query, c's clean copy
        ranks = count_closer(q, thr, g_emb, dist, exclude=excl)[:, 0].float()
        nn2 = nearest_neighbors(q, g_emb, 2, dist, targets.reshape(-1))
        nearest_other = torch.where(nn2[:, 0] == c_rep, nn2[:, 1], nn2[:, 0])
        top1_label = torch.where(ranks == 0, labels[c_rep], labels[nearest_other])
        ok = (top1_label == labels[targets.reshape(-1)]).float().reshape(b, k).mean(1)
        return {"rank": (100.0 * ranks / n).reshape(b, k).mean(1), "recall@1": 100.0 * ok}

    def view(self, gallery: Gallery, part: Selection, emb: torch.Tensor) -> RankingView:
        """The list of the first query of Q, with c replaced by c~ (c highlighted)."""
        q, c = int(part.targets[0, 0]), int(part.anchors[0])
        return RankingView(gallery.embeddings[q], q, (c, emb[0]), [q], [c])


@ATTACKS.register("CA+", aliases=("ca+",))
class CandidateRaise(CandidateAttack):
    name = "CA+"
    raise_rank = True
    direction = "down"
    description = "raise a candidate in the rankings of w random queries (Eq. 4)"


@ATTACKS.register("CA-", aliases=("CA−", "ca-", "ca−"))
class CandidateLower(CandidateAttack):
    name = "CA-"
    raise_rank = False
    direction = "up"
    description = "sink a candidate in the rankings of w queries from its top 1% (Eq. 7)"
