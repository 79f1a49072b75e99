"""The four attacks behind one calling convention.

``RankingAttack(model, gallery, distance, spec, threat)(images, targets, sp_targets)`` returns
adversarial images: for CA the images are the candidates c and ``targets [B, w]`` index their
query sets Q in the gallery; for QA the images are the queries q and ``targets [B, m]`` index
their candidate sets C (``sp_targets [B, G]``: C_SP for the SP term).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advrank.attacks.objectives import (
    LOWER,
    RAISE,
    SP_REDUCTIONS,
    CandidateObjective,
    QueryObjective,
)
from advrank.attacks.pgd import pgd
from advrank.attacks.threat import LinfThreatModel
from advrank.distances import Distance
from advrank.errors import AdvrankError
from advrank.utils import check_images

ATTACKS = ("CA+", "CA-", "QA+", "QA-")
_ALIASES = {"CA−": "CA-", "QA−": "QA-"}


@dataclass(frozen=True)
class AttackSpec:
    """Which attack: target ``CA`` (perturb candidate) or ``QA`` (perturb query), ``+``/``-``."""

    target: str  # "CA" or "QA"
    direction: str  # "+" raises the rank, "-" lowers it

    @property
    def name(self) -> str:
        return f"{self.target}{self.direction}"

    @property
    def paper_xi(self) -> float:
        """§4: xi = 1 for QA+, 1e2 for QA-, unused for CA."""
        if self.target == "CA":
            return 0.0
        return 1.0 if self.direction == RAISE else 100.0


def parse_attack(name: str) -> AttackSpec:
    key = _ALIASES.get(name, name).upper()
    if key not in ATTACKS:
        raise AdvrankError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}")
    return AttackSpec(key[:2], key[2])


class RankingAttack:
    """A white-box ranking attack with an explicit L-inf threat model (see module docstring).

    gallery ``[N, D]``: embeddings of the candidate set X, computed once by the caller.
    """

    def __init__(self, model: nn.Module, gallery: torch.Tensor, distance: Distance,
                 spec: AttackSpec | str, threat: LinfThreatModel, xi: float | None = None,
                 sp_reduction: str = "sum"):
        self.model, self.gallery, self.distance = model, gallery, distance
        self.spec = parse_attack(spec) if isinstance(spec, str) else spec
        self.threat = threat
        self.xi = self.spec.paper_xi if xi is None else float(xi)
        if sp_reduction not in SP_REDUCTIONS:
            raise AdvrankError(f"unknown SP reduction {sp_reduction!r}; choose one of: "
                               f"{', '.join(SP_REDUCTIONS)}")
        self.sp_reduction = sp_reduction

    def objective(self, targets: torch.Tensor, sp_targets: torch.Tensor | None = None):
        n = self.gallery.shape[0]
        if targets.dim() != 2 or targets.numel() and (targets.min() < 0 or targets.max() >= n):
            raise AdvrankError(f"targets must be [B, k] gallery indices in [0, {n})")
        if self.spec.target == "CA":
            return CandidateObjective(self.spec.direction, self.gallery[targets], self.gallery,
                                      self.distance)
        return QueryObjective(self.spec.direction, targets, self.gallery, self.distance,
                              sp_candidates=sp_targets, xi=self.xi,
                              reduction=self.sp_reduction)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor,
                 sp_targets: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        check_images(images)
        if images.shape[0] != targets.shape[0]:
            raise AdvrankError(f"{images.shape[0]} images but {targets.shape[0]} target rows")
        device = self.gallery.device
        sp = None if sp_targets is None else sp_targets.to(device)
        objective = self.objective(targets.to(device), sp)
        return pgd(self.model, images, objective, self.threat, generator)

    def __repr__(self) -> str:
        return (f"RankingAttack({self.spec.name}, {self.threat}, xi={self.xi}, "
                f"sp_reduction={self.sp_reduction!r})")


__all__ = ["ATTACKS", "AttackSpec", "RankingAttack", "parse_attack", "LOWER", "RAISE"]
