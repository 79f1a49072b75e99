"""Query-only optimisers: they minimise a score computed from an oracle's feedback under the
L-inf threat model, batched over attacks, within a per-attack query budget (see
:mod:`advrank.attacks.query.base`). One file each (``random_search``, ``nes``, ``spsa``),
registered in :data:`advrank.registry.OPTIMIZERS`."""

from advrank.attacks.query.base import (
    Ball,
    Best,
    CountedObjective,
    QueryOptimizer,
    get_optimizer,
)

__all__ = ["Ball", "Best", "CountedObjective", "QueryOptimizer", "get_optimizer"]
