"""Metric-learning losses from pytorch-metric-learning, registered by name.

Each entry is ``factory(distance, margin) -> nn.Module`` (``loss(embeddings [B, D], labels [B])
-> scalar``, over all valid triplets/pairs of the batch) with ``default_margin(metric)``, in
distance units: triplet 0.2 (cosine) / 1.0 (Euclidean); contrastive negative margin 0.5
(cosine) / 1.0 (Euclidean); ``siamese`` (the ECCV 2020 authors' released contrastive loss)
0.2 (cosine) / 1.0 (Euclidean).
"""

from __future__ import annotations

import torch
from torch import nn

from advrank.core.distances import Distance
from advrank.registry import LOSSES


@LOSSES.register("triplet", default_margin={"cosine": 0.2, "euclidean": 1.0})
def triplet(distance: Distance, margin: float) -> nn.Module:
    """[d(a, p) - d(a, n) + margin]_+ over every valid triplet of the batch."""
    from pytorch_metric_learning import losses

    return losses.TripletMarginLoss(margin=margin, distance=distance.to_pml())


@LOSSES.register("contrastive", default_margin={"cosine": 0.5, "euclidean": 1.0})
def contrastive(distance: Distance, margin: float) -> nn.Module:
    """Positive pairs pulled together, negative pairs pushed ``margin`` apart."""
    from pytorch_metric_learning import losses

    pml_dist = distance.to_pml()
    if pml_dist.is_inverted:  # similarity: positives want sim >= 1, negatives sim <= 1 - m
        return losses.ContrastiveLoss(pos_margin=1.0, neg_margin=1.0 - margin, distance=pml_dist)
    return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=margin, distance=pml_dist)


class SiameseLoss(nn.Module):
    """The contrastive loss of the paper's released code (``*_c2f2_siamese.py``): over *every*
    ordered pair (i, j) of the batch, the diagonal included,

        L = mean_{i,j} ( [y_i = y_j] d(e_i, e_j) + [y_i != y_j] [margin - d(e_i, e_j)]_+ ),

    i.e. positives are pulled by their plain (not squared) distance and the mean runs over all
    B^2 entries. pytorch-metric-learning's ``ContrastiveLoss`` (our ``contrastive``) averages
    the non-zero positive and negative terms separately instead.
    """

    def __init__(self, distance: Distance, margin: float):
        super().__init__()
        self.distance, self.margin = distance, float(margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embeddings ``[B, D]``, labels ``[B]`` -> scalar."""
        d = self.distance.pairwise(embeddings, embeddings)  # [B, B]
        same = labels[:, None] == labels[None, :]
        return torch.where(same, d, torch.relu(self.margin - d)).mean()


@LOSSES.register("siamese", default_margin={"cosine": 0.2, "euclidean": 1.0})
def siamese(distance: Distance, margin: float) -> nn.Module:
    """The released code's contrastive ("siamese") loss, see :class:`SiameseLoss`."""
    return SiameseLoss(distance, margin)


def loss_names() -> list[str]:
    return LOSSES.names()


def default_margin(loss: str, metric: str) -> float:
    """The registered default margin of ``loss`` for ``metric`` (1.0 when it names none)."""
    return float(LOSSES.entry(loss).info.get("default_margin", {}).get(metric, 1.0))


def make_loss(loss: str, distance: Distance, margin: float) -> nn.Module:
    """The loss module ``loss`` for ``distance`` with ``margin``."""
    return LOSSES.get(loss)(distance, margin)
