"""Adversarial ranking attacks: threat model, objectives (what to optimise) and PGD (how)."""

from advrank.attacks.objectives import (
    CandidateObjective,
    EmbeddingShiftObjective,
    QueryObjective,
    RankingObjective,
)
from advrank.attacks.pgd import pgd, project
from advrank.attacks.ranking import ATTACKS, AttackSpec, RankingAttack, parse_attack
from advrank.attacks.threat import LinfThreatModel, paper_step_size, paper_steps

__all__ = [
    "ATTACKS", "AttackSpec", "CandidateObjective", "EmbeddingShiftObjective",
    "LinfThreatModel", "QueryObjective", "RankingAttack", "RankingObjective",
    "paper_step_size", "paper_steps", "parse_attack", "pgd", "project",
]
