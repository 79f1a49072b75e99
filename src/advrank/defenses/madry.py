"""``madry``: the direct adaptation of Madry et al.'s defense to ranking (the §3.3 baseline).

Every image, taken as a query against the clean embeddings of its own batch, is perturbed by
the ranking attack that inverts its triplets (QA- on its same-class positives and QA+ on its
other-class negatives, see :class:`TripletInversionObjective`). §3.3 reports that such training
diverges; the per-epoch loss in the checkpoint history shows whether it does here.
"""

from __future__ import annotations

import torch
from torch import nn

from advrank.attacks.base import RankingObjective
from advrank.attacks.pgd import frozen, pgd
from advrank.core.checks import check_images
from advrank.core.distances import Distance
from advrank.defenses.base import AdversarialTrainingDefense
from advrank.errors import AdvrankError
from advrank.registry import DEFENSES


class TripletInversionObjective(RankingObjective):
    """The ranking attack that maximises a batch's triplet loss, one query per batch member.

    Each batch member b is a query q_b = x_b + r_b ranked against the *clean* batch embeddings
    ``batch [B, D]`` (its own clean copy left out). With P(b) its same-class members and N(b) the
    others, PGD minimises

        L_b = sum_{p in P(b)} sum_{n in N(b)} [d(q_b, x_n) - d(q_b, x_p)]_+ ,

    which is L_QA-(q_b, C = P(b); X = N(b)) of Eq. 9 and, identically, L_QA+(q_b, C = N(b);
    X = P(b)) of Eq. 11: positives are pushed down the ranking and negatives up, until every
    negative is ranked ahead of every positive, i.e. every triplet (q_b, p, n) is violated.
    A member without same-class batch mates has a zero loss (it keeps its random start). Rows
    are independent, so ``value_and_grad`` works through them in chunks to bound the
    ``[rows, P_max, B]`` hinge tensor.
    """

    def __init__(self, batch: torch.Tensor, labels: torch.Tensor, distance: Distance,
                 max_elements: int = 1 << 22):
        self.batch, self.distance = batch.detach(), distance
        labels = labels.to(batch.device)
        same = labels[:, None] == labels[None, :]  # [B, B]
        self_mask = torch.eye(labels.numel(), dtype=torch.bool, device=batch.device)
        self.pos, self.neg = same & ~self_mask, ~same  # [B, B] each
        # Positives are few (about B / classes per row): gather them into [B, P_max] columns
        # (padding masked out) so the hinge tensor is [rows, P_max, B], not [rows, B, B].
        p_max = max(1, int(self.pos.sum(1).max()))
        self.pos_idx = self.pos.int().argsort(dim=1, descending=True, stable=True)[:, :p_max]
        self.pos_valid = self.pos.gather(1, self.pos_idx)  # [B, P_max]
        self.rows = max(1, max_elements // (p_max * labels.numel()))

    def _rows_loss(self, emb: torch.Tensor, s: int) -> torch.Tensor:
        rows = slice(s, s + emb.shape[0])
        d = self.distance.pairwise(emb, self.batch)  # [b, B]: d(q_b, x_j)
        d_pos = d.gather(1, self.pos_idx[rows])  # [b, P_max]: d(q_b, x_p)
        diff = d[:, None, :] - d_pos[:, :, None]  # [b, P_max, B]: d(q, x_n) - d(q, x_p)
        pairs = self.pos_valid[rows, :, None] & self.neg[rows, None, :]
        return (torch.relu(diff) * pairs).sum(dim=(1, 2))

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._rows_loss(emb[s : s + self.rows], s)
                          for s in range(0, emb.shape[0], self.rows)])

    def value_and_grad(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, grads = [], []
        for s in range(0, emb.shape[0], self.rows):
            e = emb[s : s + self.rows].detach().requires_grad_(True)
            with torch.enable_grad():
                loss = self._rows_loss(e, s)
                (g,) = torch.autograd.grad(loss.sum(), e)
            values.append(loss.detach())
            grads.append(g)
        return torch.cat(values), torch.cat(grads)


@DEFENSES.register("madry")
class MadryRankingDefense(AdversarialTrainingDefense):
    """``--defense madry``: the direct adaptation of Madry's defense to ranking (baseline).

    Exactly what it does, per training batch (images ``[B, C, H, W]``, labels ``[B]``):

    1. embed the clean batch with the frozen model: ``X = f(x) [B, D]``;
    2. perturb *every* image as a query with PGD (random start, same eps/alpha/eta as ``est``)
       on :class:`TripletInversionObjective` against X — the ranking attack that maximises the
       triplet loss by ranking all of the query's negatives ahead of all of its positives;
    3. hand back the perturbed batch, so the triplet loss is computed with all three triplet
       members adversarial (each perturbed as its own anchor), as in Eq. 13.

    §3.3 reports that such training diverges ("the generated adversarial examples being too
    strong"); the per-epoch ``loss`` in the checkpoint history shows whether it does here.
    """

    name = "madry"

    def perturb(self, model: nn.Module, images: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        check_images(images)
        if labels is None or labels.shape != images.shape[:1]:
            raise AdvrankError("the madry defense needs the batch labels [B]")
        with frozen(model), torch.no_grad():
            batch = model(images)  # [B, D]: the clean batch is the attack's candidate set X
        objective = TripletInversionObjective(batch, labels, self.distance)
        return pgd(model, images, objective, self.threat, self.generator)
