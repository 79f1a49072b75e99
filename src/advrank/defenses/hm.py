"""``hm`` / ``hm-ics``: hardness manipulation with the gradual adversary (Zhou & Patel, "Enhancing
Adversarial Robustness for Deep Metric Learning", CVPR 2022; robrank's best configuration
``ghmetsmi``: gradual, ET alignment, soft-hard source triplets, ICS).

Per training batch (images ``[B, C, H, W]``, labels ``[B]``):

1. embed the clean batch and mine k = B // 2 *source* triplets (a, p, n), soft-hard: the
   positive drawn with weight ``exp(d(a, p) / tau)``, the negative with ``exp(-d(a, n) / tau)``;
2. the hardness of a triplet is ``H = d(a, p) - d(a, n)`` (higher = harder). The gradual
   adversary g_LGA sets the *destination* hardness from the previous batch's adversarial loss
   ``l`` (its mean raw triplet hinge): ``H_dest = -margin * clamp(l / margin, 0, 1)``, so a
   model that still fails (l >= margin) gets semi-hard triplets (H = -margin) and one that
   copes gets ever harder ones (up to H = 0);
3. PGD perturbs copies of (a, p, n) together within the L-inf ball to minimise the ET
   alignment ``sum max(0, H_dest - H(a~, p~, n~))^2``: every triplet is made at least as hard
   as the destination (the paper's "hardness manipulation"; triplets already harder are left);
4. the loss is the run's triplet loss on (a~, p~, n~); ``hm-ics`` adds the intra-class
   structure term ``0.5 * mean max(0, d(a, a~) - d(a, p))`` on clean a, p: the perturbed anchor
   must stay closer to its clean self than the clean positive is.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from advrank.attacks.base import RankingObjective
from advrank.attacks.pgd import frozen, pgd
from advrank.core.checks import check_images
from advrank.core.distances import Distance
from advrank.defenses.act import _takes_triplets
from advrank.defenses.base import PGDDefense
from advrank.errors import AdvrankError
from advrank.registry import DEFENSES

SOFT_HARD_TEMPERATURE = 0.1  # in distance units: sharp enough to prefer hard members
ICS_WEIGHT = 0.5  # robrank's lambda for the intra-class structure term


def hardness(distance: Distance, emb: torch.Tensor) -> torch.Tensor:
    """Stacked triplet embeddings ``[a_1..a_k, p_1..p_k, n_1..n_k]`` ``[3k, D]`` -> the
    hardness ``d(a, p) - d(a, n)`` of each triplet ``[k]``."""
    if emb.shape[0] % 3:
        raise AdvrankError("hardness needs stacked triplets [a; p; n]")
    a, p, n = emb.chunk(3)
    return distance.paired(a, p) - distance.paired(a, n)


def gradual_destination(previous_loss: float, margin: float) -> float:
    """g_LGA: the destination hardness after a batch whose adversarial loss was
    ``previous_loss`` (``-margin`` while the loss is >= margin, rising linearly to 0)."""
    return -margin * min(max(previous_loss / margin, 0.0), 1.0)


class HardnessObjective(RankingObjective):
    """PGD objective on stacked triplets ``[3k, D]``: the ET alignment
    ``max(0, H_dest - H)^2`` of each triplet, repeated on its three rows ``[3k]``."""

    def __init__(self, distance: Distance, destination: float):
        self.distance, self.destination = distance, float(destination)

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        gap = (self.destination - hardness(self.distance, emb)).clamp(min=0.0).square()
        return gap.repeat(3)

    def value_and_grad(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = emb.detach().requires_grad_(True)
        with torch.enable_grad():
            gap = (self.destination - hardness(self.distance, e)).clamp(min=0.0).square()
            (grad,) = torch.autograd.grad(gap.sum(), e)
        return gap.detach().repeat(3), grad


def mine_soft_hard(emb: torch.Tensor, labels: torch.Tensor, distance: Distance, count: int,
                   generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` soft-hard triplets of batch indices ``(anchors, positives, negatives)`` ``[k]``
    from embeddings ``emb [B, D]``: distinct random anchors (that have a partner and another
    class), positives drawn with weight ``exp(d / tau)``, negatives with ``exp(-d / tau)``."""
    emb, labels = emb.detach().cpu().float(), labels.cpu()
    b = labels.numel()
    same = labels[:, None] == labels[None, :]
    pos_mask, neg_mask = same & ~torch.eye(b, dtype=torch.bool), ~same
    usable = (pos_mask.any(1) & neg_mask.any(1)).nonzero()[:, 0]
    if usable.numel() == 0:
        raise AdvrankError("the hm defense needs batches with two members of one class and a "
                           "member of another class")
    anchors = usable[torch.randperm(usable.numel(), generator=generator)[:count]]
    d = distance.pairwise(emb[anchors], emb) / SOFT_HARD_TEMPERATURE  # [k, B]
    # softmax weights, masked; subtracting the row max keeps exp finite
    pos_w = torch.where(pos_mask[anchors], d, -torch.inf).softmax(1)
    neg_w = torch.where(neg_mask[anchors], -d, -torch.inf).softmax(1)
    positives = torch.multinomial(pos_w, 1, generator=generator)[:, 0]
    negatives = torch.multinomial(neg_w, 1, generator=generator)[:, 0]
    return anchors, positives, negatives


@DEFENSES.register("hm")
class HardnessManipulationDefense(PGDDefense):
    """``--defense hm``: hardness manipulation with the gradual adversary (module docstring);
    ``ics`` adds the intra-class structure loss (``--defense hm-ics``)."""

    name: ClassVar[str] = "hm"
    ics: ClassVar[bool] = False
    random_start = False  # robrank's hardness manipulation starts at the clean images

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.previous_loss: float | None = None  # None: first batch, semi-hard destination

    def manipulate(self, model: nn.Module, triplets: torch.Tensor, margin: float
                   ) -> torch.Tensor:
        """Stacked triplet images ``[3k, C, H, W]`` -> perturbed copies within eps, each
        triplet made at least as hard as the gradual destination. No parameter gradients."""
        check_images(triplets)
        previous = margin if self.previous_loss is None else self.previous_loss
        objective = HardnessObjective(self.distance, gradual_destination(previous, margin))
        return pgd(model, triplets, objective, self.threat, self.generator)

    def training_loss(self, model, images, labels, criterion):
        check_images(images)
        if labels is None or labels.shape != images.shape[:1]:
            raise AdvrankError("the hm defense needs the batch labels [B]")
        margin = getattr(criterion, "margin", None)
        if not _takes_triplets(criterion) or margin is None:
            raise AdvrankError("the hm defense needs a pytorch-metric-learning loss with a "
                               "margin that takes given triplets (e.g. triplet)")
        model.train()
        emb = model(images)  # [B, D]; clean, trained through by the ICS term
        anc, pos, neg = (i.to(images.device) for i in mine_soft_hard(
            emb, labels, self.distance, images.shape[0] // 2, self.generator))
        with frozen(model):
            adv = self.manipulate(model, images[torch.cat([anc, pos, neg])], float(margin))
        model.train()
        adv_emb = model(adv)  # [3k, D]
        k = anc.numel()
        idx = torch.arange(k, device=images.device)
        loss = criterion(adv_emb, labels[torch.cat([anc, pos, neg])],
                         indices_tuple=(idx, idx + k, idx + 2 * k))
        raw = (hardness(self.distance, adv_emb.detach()) + margin).clamp(min=0.0).mean()
        self.previous_loss = float(raw)
        if self.ics:
            structure = (self.distance.paired(emb[anc], adv_emb[:k])
                         - self.distance.paired(emb[anc], emb[pos])).clamp(min=0.0).mean()
            loss = loss + ICS_WEIGHT * structure
        return loss, emb

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gradual": "LGA", "alignment": "ET",
                "source": "soft-hard", "ics_weight": ICS_WEIGHT if self.ics else 0.0}


@DEFENSES.register("hm-ics")
class HardnessManipulationICSDefense(HardnessManipulationDefense):
    """``--defense hm-ics``: HM with the intra-class structure loss (HM & ICS)."""

    name = "hm-ics"
    ics = True
