"""``est``: embedding-shifted triplet training, the paper's defense (§3.3, Eq. 13).

Every training image x becomes ``x + argmax_{r in Γ} d(f(x + r), f(x))``, its
maximum-embedding-shift example. The triplet loss on the adversarial batch is then exactly
``L_d-t`` of Eq. 13, since anchors, positives and negatives are all batch members and each one
is replaced by its own max-shift example.
"""

from __future__ import annotations

import torch
from torch import nn

from advrank.attacks.es import EmbeddingShiftObjective
from advrank.attacks.pgd import frozen, pgd
from advrank.core.checks import check_images
from advrank.defenses.base import AdversarialTrainingDefense
from advrank.registry import DEFENSES


@DEFENSES.register("est")
class EmbeddingShiftDefense(AdversarialTrainingDefense):
    """``--defense est``: replace x by its maximum-embedding-shift example (Eq. 13)."""

    name = "est"

    def perturb(self, model: nn.Module, images: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        check_images(images)
        with frozen(model), torch.no_grad():
            reference = model(images)  # f(x) [B, D], the point the attack moves away from
        objective = EmbeddingShiftObjective(reference, self.distance)
        return pgd(model, images, objective, self.threat, self.generator)
