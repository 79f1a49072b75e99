"""advrank: adversarial ranking attack and defense for deep metric learning.

Implements Zhou et al., "Adversarial Ranking Attack and Defense", ECCV 2020: the candidate
and query attacks (CA+/CA-/QA+/QA-) as batched L-inf PGD, the paper's evaluation protocol,
embedding-shift adversarial training, transfer and universal perturbations.
"""

from advrank.errors import AdvrankError

__version__ = "0.1.0"
__all__ = ["AdvrankError", "__version__"]
