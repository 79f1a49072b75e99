"""Query-only optimisers: they minimise a score computed from an oracle's feedback under the
L-inf threat model, batched over attacks, within a per-attack query budget (see
:mod:`advrank.attacks.query.base`; the budget's ledger: :mod:`advrank.attacks.query.budget`).
One file each (``random_search``, ``nes``, ``spsa``), registered in
:data:`advrank.registry.OPTIMIZERS`."""

from advrank.attacks.query.base import Ball, QueryOptimizer, get_optimizer
from advrank.attacks.query.budget import (
    Best,
    CountedObjective,
    OracleObjective,
    QueryCounter,
    ask,
    check_budget,
)

__all__ = ["Ball", "Best", "CountedObjective", "OracleObjective", "QueryCounter",
           "QueryOptimizer", "ask", "check_budget", "get_optimizer"]
