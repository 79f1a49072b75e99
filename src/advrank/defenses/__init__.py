"""Defenses: each one file, a training-loss hook that describes itself (see ``base.py``).

``est`` is the paper's embedding-shifted triplet training (Eq. 13); ``madry`` the direct
adaptation of Madry's adversarial training that §3.3 compares against.
"""

from advrank.defenses.act import AntiCollapseDefense, PairCollapseObjective, mine_triplets
from advrank.defenses.base import (
    AdversarialTrainingDefense,
    Defense,
    PGDDefense,
    default_defense_eps,
    defense_names,
    make_defense,
)
from advrank.defenses.est import EmbeddingShiftDefense
from advrank.defenses.madry import MadryRankingDefense, TripletInversionObjective

__all__ = ["AdversarialTrainingDefense", "AntiCollapseDefense", "Defense",
           "EmbeddingShiftDefense", "MadryRankingDefense", "PGDDefense", "PairCollapseObjective",
           "TripletInversionObjective", "default_defense_eps", "defense_names", "make_defense",
           "mine_triplets"]
