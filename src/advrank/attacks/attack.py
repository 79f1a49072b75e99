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
from advrank.core.execution import ExecutionPolicy, get_policy
from advrank.errors import AdvrankError


def _check_indices(index, n: int, name: str) -> None:
    """None, or an integer tensor ``[B, k]`` of gallery indices in ``[0, n)``."""
    if index is None:
        return
    if not isinstance(index, torch.Tensor) or index.dim() != 2 or index.is_floating_point() \
            or index.is_complex() or index.dtype == torch.bool or (index.numel() and (
                index.min() < 0 or index.max() >= n)):
        raise AdvrankError(f"{name} must be an integer tensor [B, k] of gallery indices in "
                           f"[0, {n}), got {getattr(index, 'shape', type(index).__name__)}")


class RankingAttack:
    """A white-box ranking attack with an explicit L-inf threat model (see module docstring).

    gallery ``[N, D]``: embeddings of the candidate set X, computed once by the caller.
    ``kind``: an attack name (``"CA+"``...) or an :class:`AttackKind`; ``**options`` are the
    kind's hyper-parameters (e.g. ``xi``, ``sp_reduction`` for QA). ``policy``: precision
    (:class:`~advrank.core.execution.ExecutionPolicy`); ``memory``: bytes the objective may use
    for its working set (None: its defaults). The caller sizes the batch.
    """

    def __init__(self, model: nn.Module, gallery: torch.Tensor, distance: Distance | str,
                 kind: AttackKind | str, threat: LinfThreatModel,
                 policy: ExecutionPolicy | None = None, memory: int | None = None, **options):
        if not isinstance(threat, LinfThreatModel):
            raise AdvrankError(f"threat must be a LinfThreatModel, got {type(threat).__name__}")
        self.model, self.gallery, self.distance = model, gallery, get_distance(distance)
        self.kind = get_attack(kind, **options)
        self.threat = self.kind.threat_for(threat)
        self.policy, self.memory = get_policy(policy), memory

    def objective(self, part: Selection, clean: torch.Tensor | None = None):
        """The kind's objective for a batch (targets checked against the gallery size)."""
        for name in ("targets", "sp"):
            _check_indices(getattr(part, name), self.gallery.shape[0], name)
        return self.kind.prepare(self.gallery, self.distance, part, clean, policy=self.policy,
                                 memory=self.memory)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None,
                 sp_targets: torch.Tensor | None = None,
                 generator: torch.Generator | None = None,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """images ``[B, C, H, W]`` in [0, 1] -> adversarial images, same shape."""
        check_images(images)
        n = self.gallery.shape[0]
        for name, index in (("targets", targets), ("sp_targets", sp_targets)):
            _check_indices(index, n, name)
            if index is not None and images.shape[0] != index.shape[0]:
                raise AdvrankError(f"{images.shape[0]} images but {index.shape[0]} rows of "
                                   f"{name}")
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
        with self.policy.products(images.device):
            return pgd(self.model, images, self.objective(part, clean), self.threat, generator,
                       noise=noise, policy=self.policy)

    def __repr__(self) -> str:
        return f"RankingAttack({self.kind!r}, {self.threat})"
