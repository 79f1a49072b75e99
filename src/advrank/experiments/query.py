"""Query-only (black-box) attacks on a deployed search: the §4 selection and figures of a
ranked attack kind (QA+, QA-), optimised through an oracle's feedback alone within a query
budget per attack (see :mod:`advrank.oracles` and :mod:`advrank.attacks.query`).

The attacks are drawn from the local target's gallery (the service's ids when both are built
from the same checkpoint and data) and measured there exactly, as white-box results are, on
the candidate the optimiser queried (8-bit when the oracle uploads pictures).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from advrank.attacks.base import AttackKind, check_query_only, get_attack
from advrank.attacks.feedback import FeedbackScore
from advrank.attacks.query.base import Ball, CountedObjective, QueryOptimizer, get_optimizer
from advrank.attacks.selection import Selection
from advrank.core.checks import check_number, check_progress, check_seed
from advrank.core.runtime import derived_seed, progress_bar
from advrank.errors import AdvrankError
from advrank.experiments.protocol import (
    AttackResult,
    RankLog,
    check_batch_size,
    embed_checked,
)
from advrank.oracles.base import Oracle, QueryCounter, ask, check_budget


class _Threat:
    """The threat model a query-only result records (eps, and the 8-bit grid of uploads)."""

    def __init__(self, eps: float, eight_bit: bool, budget: int):
        self.eps, self.eight_bit, self.budget = eps, eight_bit, budget

    def describe(self) -> dict[str, Any]:
        return {"norm": "Linf", "eps": self.eps, "eight_bit": self.eight_bit,
                "query_budget": self.budget}


def named_items(score, rows: torch.Tensor) -> torch.Tensor | None:
    """``[N, j]``: the gallery ids whose positions ``score`` reads in the lists of the attacks
    ``rows [N]``, so an oracle may answer with their ranks alone: at full feedback a
    :class:`FeedbackScore` reads its targets, the ids it leaves out and C_SP, nothing else.
    None (every list whole) for any other score."""
    if not isinstance(score, FeedbackScore) or score.feedback.level != "full":
        return None
    sets = [score.targets, score.exclude] + ([] if score.keep is None else [score.keep])
    return torch.cat([s[rows] for s in sets], 1)


def attack_part(target, kind: AttackKind, oracle: Oracle, optimizer: QueryOptimizer,
                eps: float, budget: int, part: Selection, generator: torch.Generator,
                start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of query-only attacks: ``(adversarial images [B, C, H, W], queries used
    [B])``; ``start [B, C, H, W]``: where the optimiser starts (default: the clean query)."""
    gallery = target.gallery
    counter = QueryCounter(len(part), budget)
    score = kind.query_score(gallery, part, oracle.feedback,
                             lambda x: ask(oracle, counter, x))
    objective = CountedObjective(
        lambda x, rows: score(oracle.answer(x, named_items(score, rows)), rows), counter)
    ball = Ball(gallery.images(part.anchors), eps, oracle.eight_bit)
    adv, _ = optimizer.run(objective, ball, start, generator)
    return adv, counter.used


def run_query_attack(target, attack: str | AttackKind, oracle: Oracle,
                     optimizer: str | QueryOptimizer, eps: float, k: int, num_attacks: int,
                     budget: int, seed: int = 0, batch_size: int = 256,
                     selection: Selection | None = None, start: torch.Tensor | None = None,
                     progress: bool | None = None) -> AttackResult:
    """T = ``num_attacks`` query-only attacks of ``attack`` at ``eps`` with size ``k``, each
    within ``budget`` queries to ``oracle``, optimised by ``optimizer`` (a registered name or
    an instance). ``start [T, C, H, W]``: start points (e.g. a transfer attack's images, in
    selection order). The result's ``extra`` holds ``queries_used`` (mean per attack),
    ``queries_used_max``, the oracle and the optimiser; batches draw from one generator each
    (keyed by seed and position), so results depend on ``batch_size``."""
    kind, optimizer = check_query_only(get_attack(attack)), get_optimizer(optimizer)
    check_number(eps, "eps (pixel units)", low=0.0, high=1.0)
    budget, seed = check_budget(budget), check_seed(seed)
    batch_size = check_batch_size(batch_size)
    check_progress(progress)
    gallery = target.gallery
    selection = selection or kind.select(gallery, k, num_attacks, seed)
    if start is not None and start.shape[0] != len(selection):
        raise AdvrankError(f"{start.shape[0]} start images for {len(selection)} attacks")
    t0, log, used = time.time(), RankLog(), []
    bar = progress_bar(total=len(selection), desc=f"{kind.name} query-only eps={eps:g}",
                       unit="attack", enabled=progress)
    emb = gallery.embeddings
    for s in range(0, len(selection), batch_size):
        part = selection.slice(s, s + batch_size)
        gen = torch.Generator().manual_seed(derived_seed(seed, "query", s))
        adv, spent = attack_part(target, kind, oracle, optimizer, eps, budget, part, gen,
                                 None if start is None else start[s : s + batch_size])
        with torch.no_grad():
            clean = kind.measure(gallery, part, emb[part.anchors.to(emb.device)])
            attacked = kind.measure(gallery, part, embed_checked(target.model, adv))
        log.add(clean, attacked)
        used.append(spent)
        bar.update(len(part))
    bar.close()
    threat = _Threat(eps, oracle.eight_bit, budget)
    result = log.result(kind, eps, k, gallery, threat, time.time() - t0)
    spent = torch.cat(used).double()
    result.extra.update({"queries_used": spent.mean().item(),
                         "queries_used_max": int(spent.max()), "query_budget": budget,
                         "queries_sent": oracle.queries, **oracle.describe(),
                         **optimizer.describe()})
    return result
