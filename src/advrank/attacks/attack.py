"""``RankingAttack``: any attack kind behind one torchattacks-style calling convention.

``RankingAttack(model, gallery, distance, kind, threat)(images, targets, sp_targets)`` returns
adversarial images: hyper-parameters in the constructor, data at call time, an explicit threat
model. For CA the images are the candidates c (``[B, C, H, W]`` in [0, 1]) and ``targets
[B, w]`` index their query sets Q in the gallery; for QA the images are the queries q and
``targets [B, m]`` index their candidate sets C (``sp_targets [B, G]``: C_SP; when omitted it
is built from q's clean embedding).
"""

from __future__ import annotations

import torch
from torch import nn

from advrank.attacks.base import AttackKind, get_attack
from advrank.attacks.pgd import pgd
from advrank.attacks.selection import Selection
from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import check_images
from advrank.core.distances import Distance, get_distance
from advrank.errors import AdvrankError


class RankingAttack:
    """A white-box ranking attack with an explicit L-inf threat model (see module docstring).

    gallery ``[N, D]``: embeddings of the candidate set X, computed once by the caller.
    ``kind``: an attack name (``"CA+"``...) or an :class:`AttackKind`; ``**options`` are the
    kind's hyper-parameters (e.g. ``xi``, ``sp_reduction`` for QA).
    """

    def __init__(self, model: nn.Module, gallery: torch.Tensor, distance: Distance | str,
                 kind: AttackKind | str, threat: LinfThreatModel, **options):
        if not isinstance(threat, LinfThreatModel):
            raise AdvrankError(f"threat must be a LinfThreatModel, got {type(threat).__name__}")
        self.model, self.gallery, self.distance = model, gallery, get_distance(distance)
        self.kind = get_attack(kind, **options)
        self.threat = self.kind.threat_for(threat)

    def objective(self, part: Selection, clean: torch.Tensor | None = None):
        """The kind's objective for a batch (targets checked against the gallery size)."""
        n = self.gallery.shape[0]
        targets = part.targets
        if targets is not None and (targets.dim() != 2 or targets.numel() and (
                targets.min() < 0 or targets.max() >= n)):
            raise AdvrankError(f"targets must be [B, k] gallery indices in [0, {n})")
        return self.kind.objective(self.gallery, self.distance, part, clean)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None,
                 sp_targets: torch.Tensor | None = None,
                 generator: torch.Generator | None = None,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """images ``[B, C, H, W]`` in [0, 1] -> adversarial images, same shape."""
        check_images(images)
        if targets is not None and images.shape[0] != targets.shape[0]:
            raise AdvrankError(f"{images.shape[0]} images but {targets.shape[0]} target rows")
        device = self.gallery.device
        part = Selection(torch.full((images.shape[0],), -1),
                         None if targets is None else targets.to(device),
                         None if sp_targets is None else sp_targets.to(device))
        clean = None
        if self.kind.needs_clean:
            with torch.no_grad():
                was = self.model.training
                clean = self.model.eval()(images)
                self.model.train(was)
        return pgd(self.model, images, self.objective(part, clean), self.threat, generator,
                   noise=noise)

    def __repr__(self) -> str:
        return f"RankingAttack({self.kind!r}, {self.threat})"
