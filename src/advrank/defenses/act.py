"""``act``: anti-collapse triplet training, robrank's defense (Zhou et al., T-PAMI 2024,
``robrank/defenses/pnp.py``, "pnp" training step with ``pncollapse``).

Per training batch (images ``[B, C, H, W]``, labels ``[B]``):

1. embed the clean batch (with gradient: the anchors stay clean and are trained through);
2. mine k = B // 2 triplets (a, p, n): a random anchor, a random other member of its class
   and a random member of another class (robrank's ``spc2-random`` miner on its paired
   batches does the same);
3. perturb copies of the positives and negatives *together* with PGD (from the clean images,
   as robrank does) so that their embeddings collapse onto each other, i.e. minimise
   ``d(f(p~), f(n~))`` within the L-inf ball — the attack that makes a triplet's positive and
   negative indistinguishable;
4. train the run's loss on the triplets (clean a, p~, n~), so the model learns to keep them
   apart ("anti-collapse").

The loss is the run's pytorch-metric-learning loss given these triplets (``indices_tuple``
with ``ref_emb``), so its margin and reducer are those of the vanilla run; robrank averages the
raw triplet hinge over all triplets instead of pml's average over the non-zero ones.
"""

from __future__ import annotations

import torch
from torch import nn

from advrank.attacks.base import RankingObjective
from advrank.attacks.pgd import frozen, pgd
from advrank.core.checks import check_images
from advrank.core.distances import Distance
from advrank.defenses.base import PGDDefense
from advrank.errors import AdvrankError
from advrank.registry import DEFENSES


class PairCollapseObjective(RankingObjective):
    """PGD objective on a stacked batch ``[p_1..p_k, n_1..n_k]`` of 2k embeddings: the sum
    over i of d(p_i, n_i). Each row's value is its pair's distance ``[2k]``; the gradient is
    that of the sum, so both members of a pair move towards each other."""

    def __init__(self, distance: Distance):
        self.distance = distance

    def _pairs(self, emb: torch.Tensor) -> torch.Tensor:
        if emb.shape[0] % 2:
            raise AdvrankError("pair collapse needs an even number of embeddings [p; n]")
        k = emb.shape[0] // 2
        return self.distance.paired(emb[:k], emb[k:])  # [k]

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        d = self._pairs(emb)
        return torch.cat([d, d])

    def value_and_grad(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = emb.detach().requires_grad_(True)
        with torch.enable_grad():
            d = self._pairs(e)
            (grad,) = torch.autograd.grad(d.sum(), e)
        d = d.detach()
        return torch.cat([d, d]), grad


def mine_triplets(labels: torch.Tensor, count: int, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` random triplets of batch indices ``(anchors, positives, negatives)``, each
    ``[k]`` (k <= count: only members with a same-class partner and another class present can
    anchor; distinct anchors). Drawn on the CPU from ``generator`` (global RNG if None)."""
    labels = labels.cpu()
    b = labels.numel()
    same = labels[:, None] == labels[None, :]
    pos_w = (same & ~torch.eye(b, dtype=torch.bool)).float()  # [B, B]
    neg_w = (~same).float()
    usable = ((pos_w.sum(1) > 0) & (neg_w.sum(1) > 0)).nonzero()[:, 0]
    if usable.numel() == 0:
        raise AdvrankError("the act defense needs batches with two members of one class and "
                           "a member of another class")
    order = torch.randperm(usable.numel(), generator=generator)
    anchors = usable[order[:count]]
    positives = torch.multinomial(pos_w[anchors], 1, generator=generator)[:, 0]
    negatives = torch.multinomial(neg_w[anchors], 1, generator=generator)[:, 0]
    return anchors, positives, negatives


@DEFENSES.register("act")
class AntiCollapseDefense(PGDDefense):
    """``--defense act``: anti-collapse triplet training (see the module docstring)."""

    name = "act"
    random_start = False  # robrank's pncollapse starts at the clean images

    def collapse(self, model: nn.Module, positives: torch.Tensor,
                 negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[k, C, H, W]`` of positives and negatives -> their perturbed copies, each
        within eps of its own image (L-inf, [0, 1]), with the pair embeddings pulled together.
        Parameters get no gradients."""
        check_images(positives)
        check_images(negatives)
        k = positives.shape[0]
        adv = pgd(model, torch.cat([positives, negatives]),
                  PairCollapseObjective(self.distance), self.threat, self.generator)
        return adv[:k], adv[k:]

    def training_loss(self, model, images, labels, criterion):
        check_images(images)
        if labels is None or labels.shape != images.shape[:1]:
            raise AdvrankError("the act defense needs the batch labels [B]")
        if not _takes_triplets(criterion):
            raise AdvrankError("the act defense needs a pytorch-metric-learning loss that "
                               "takes given triplets (e.g. triplet or contrastive)")
        anc, pos, neg = (i.to(images.device) for i in
                         mine_triplets(labels, images.shape[0] // 2, self.generator))
        with frozen(model):
            adv_pos, adv_neg = self.collapse(model, images[pos], images[neg])
        model.train()
        emb = model(images)  # clean anchors: trained through, as robrank does
        adv = model(torch.cat([adv_pos, adv_neg]))  # [2k, D]
        k = anc.numel()
        idx = torch.arange(k, device=images.device)
        loss = criterion(emb[anc], labels[anc], indices_tuple=(idx, idx, idx + k), ref_emb=adv,
                         ref_labels=torch.cat([labels[pos], labels[neg]]))
        return loss, emb


def _takes_triplets(criterion) -> bool:
    from pytorch_metric_learning.losses import BaseMetricLossFunction

    return isinstance(criterion, BaseMetricLossFunction)
