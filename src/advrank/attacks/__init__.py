"""Adversarial ranking attacks: the threat model, one PGD engine, and one file per attack kind.

``ca.py`` (CA+, CA-) and ``qa.py`` (QA+, QA-) are the paper's kinds; ``es.py`` is the
maximum-embedding-shift attack of §3.3 (and the kind ES); ``tma.py``, ``ltm.py``, ``gtm.py``
and ``gtt.py`` are the further kinds of the follow-up robrank suite (T-PAMI 2024); ``order.py``
is the relative order attack of advorder (ICCV 2021). A new kind
is one file that subclasses :class:`AttackKind` and registers itself in
:data:`advrank.registry.ATTACKS` (and in the builtins list there, for a built-in kind).
"""

from advrank.attacks.attack import RankingAttack
from advrank.attacks.base import (
    AttackKind,
    QueryKind,
    RankingObjective,
    attack_names,
    get_attack,
)
from advrank.attacks.ca import CandidateAttack, CandidateObjective
from advrank.attacks.es import EmbeddingShiftAttack, EmbeddingShiftObjective, shift_distance
from advrank.attacks.gtm import GuidedTopMismatch, PullObjective
from advrank.attacks.gtt import GuidedTopTargeted
from advrank.attacks.ltm import LearningToMisrank, MisrankObjective
from advrank.attacks.order import OrderAttack, OrderObjective
from advrank.attacks.pgd import frozen, keyed_noise, pgd, project, universal_pgd
from advrank.attacks.qa import SP_REDUCTIONS, QueryAttack, QueryObjective
from advrank.attacks.selection import Selection, sp_candidates, top_pool_size
from advrank.attacks.threat import LinfThreatModel, paper_step_size, paper_steps
from advrank.attacks.tma import TargetedMismatch, TargetedMismatchObjective

__all__ = [
    "AttackKind", "CandidateAttack", "CandidateObjective", "EmbeddingShiftAttack",
    "EmbeddingShiftObjective", "GuidedTopMismatch", "GuidedTopTargeted", "LearningToMisrank",
    "LinfThreatModel", "MisrankObjective", "OrderAttack", "OrderObjective", "PullObjective",
    "QueryAttack", "QueryKind",
    "QueryObjective", "RankingAttack", "RankingObjective", "TargetedMismatch",
    "TargetedMismatchObjective",
    "SP_REDUCTIONS", "Selection", "attack_names", "frozen", "get_attack", "keyed_noise",
    "paper_step_size", "paper_steps", "pgd", "project", "shift_distance", "sp_candidates",
    "top_pool_size", "universal_pgd",
]
