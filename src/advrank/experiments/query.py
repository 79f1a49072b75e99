"""Query-only (black-box) attacks on a deployed search: the §4 selection and figures of a
ranked attack kind (QA+, QA-), optimised through an oracle's feedback alone within a query
budget per attack (see :mod:`advrank.oracles` and :mod:`advrank.attacks.query`).

The attacks are drawn from the local target's gallery (the service's ids when both are built
from the same checkpoint and data) and measured there exactly, as white-box results are, on
the candidate the optimiser queried (8-bit when the oracle uploads pictures).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from advrank.attacks.base import AttackKind, check_query_only, get_attack
from advrank.attacks.query.base import Ball, Best, CountedObjective, QueryOptimizer, get_optimizer
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


class QueryTrace:
    """Each attack's best candidate so far (lowest objective, first found), copied when its
    queries used first reach each of ``marks`` (after the round that reaches it): the
    rank-vs-queries curve of a batch, ``snapshots[m] [B, C, H, W]``. A mark the attack never
    reaches (its budget spent, or too little left for another round) and the full budget get
    the optimiser's answer."""

    def __init__(self, marks: Sequence[int]):
        self.marks = sorted({check_budget(m) for m in marks})
        self.best: Best | None = None
        self.snapshots: dict[int, torch.Tensor] = {}
        self.taken: dict[int, torch.Tensor] = {}

    def watch(self, objective: CountedObjective) -> CountedObjective:
        """``objective``, reporting every evaluation here."""
        return _Traced(objective.evaluate, objective.counter, self)

    def record(self, x: torch.Tensor, values: torch.Tensor, used: torch.Tensor) -> None:
        """Candidates ``x [B, P, C, H, W]`` scored ``values [B, P]``; ``used [B]`` so far."""
        if self.best is None:
            self.best = Best(x[:, 0], torch.full((x.shape[0],), math.inf))
            self.snapshots = {m: x[:, 0].clone() for m in self.marks}
            self.taken = {m: torch.zeros(x.shape[0], dtype=torch.bool) for m in self.marks}
        self.best.update(x, values)
        for m in self.marks:
            due = (used >= m) & ~self.taken[m]
            if due.any():
                self.snapshots[m][due.to(x.device)] = self.best.x[due.to(x.device)]
                self.taken[m] |= due

    def finish(self, answer: torch.Tensor, used: torch.Tensor) -> None:
        """The optimiser's ``answer [B, C, H, W]`` after ``used [B]`` queries."""
        for m in self.marks:
            last = (~self.taken.get(m, torch.zeros_like(used, dtype=torch.bool))) | (used <= m)
            snap = self.snapshots.setdefault(m, answer.clone())
            snap[last.to(answer.device)] = answer[last.to(answer.device)]


class _Traced(CountedObjective):
    def __init__(self, evaluate, counter, trace: QueryTrace):
        super().__init__(evaluate, counter)
        self.trace = trace

    def __call__(self, x, active=None):
        values = super().__call__(x, active)
        self.trace.record(x, values, self.counter.used)
        return values


def attack_part(target, kind: AttackKind, oracle: Oracle, optimizer: QueryOptimizer,
                eps: float, budget: int, part: Selection, generator: torch.Generator,
                start: torch.Tensor | None = None, trace: QueryTrace | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of query-only attacks: ``(adversarial images [B, C, H, W], queries used
    [B])``; ``start [B, C, H, W]``: where the optimiser starts (default: the clean query);
    ``trace``: a :class:`QueryTrace` that records the best candidates along the way."""
    gallery = target.gallery
    counter = QueryCounter(len(part), budget)
    score = kind.query_score(gallery, part, oracle.feedback,
                             lambda x: ask(oracle, counter, x))
    objective = CountedObjective(lambda x, rows: score(oracle.answer(x), rows), counter)
    if trace is not None:
        objective = trace.watch(objective)
    ball = Ball(gallery.images(part.anchors), eps, oracle.eight_bit)
    adv, _ = optimizer.run(objective, ball, start, generator)
    if trace is not None:
        trace.finish(adv, counter.used)
    return adv, counter.used


@torch.no_grad()
def _measure(target, kind: AttackKind, part: Selection, adv: torch.Tensor,
             trace: QueryTrace | None) -> tuple[dict, dict, dict[int, dict]]:
    """The kind's figures of a batch: clean, of ``adv [B, C, H, W]``, and of each of the
    trace's snapshots (by mark)."""
    g = target.gallery
    clean = kind.measure(g, part, g.embeddings[part.anchors.to(g.embeddings.device)])
    attacked = kind.measure(g, part, embed_checked(target.model, adv))
    along = {m: kind.measure(g, part, embed_checked(target.model, snap))
             for m, snap in (trace.snapshots.items() if trace is not None else ())}
    return clean, attacked, along


def run_query_attack(target, attack: str | AttackKind, oracle: Oracle,
                     optimizer: str | QueryOptimizer, eps: float, k: int, num_attacks: int,
                     budget: int, seed: int = 0, batch_size: int = 256,
                     selection: Selection | None = None, start: torch.Tensor | None = None,
                     progress: bool | None = None, marks: Sequence[int] = ()) -> AttackResult:
    """T = ``num_attacks`` query-only attacks of ``attack`` at ``eps`` with size ``k``, each
    within ``budget`` queries to ``oracle``, optimised by ``optimizer`` (a registered name or
    an instance). ``start [T, C, H, W]``: start points (e.g. a transfer attack's images, in
    selection order). The result's ``extra`` holds ``queries_used`` (mean per attack),
    ``queries_used_max``, the oracle and the optimiser; batches draw from one generator each
    (keyed by seed and position), so results depend on ``batch_size``. ``marks``: query
    counts (e.g. 10%, 50% of the budget) at which each attack's best candidate so far is also
    measured (:class:`QueryTrace`): ``extra["checkpoints"]``, one ``{"queries": m,
    "rank_after": ..., ...}`` per mark (every ``*_after`` figure and its ``_se``)."""
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
    marks = QueryTrace(marks).marks
    if marks and marks[-1] > budget:
        raise AdvrankError(f"a query checkpoint ({marks[-1]}) lies beyond the budget ({budget})")
    logs = {m: RankLog() for m in marks}
    bar = progress_bar(total=len(selection), desc=f"{kind.name} query-only eps={eps:g}",
                       unit="attack", enabled=progress)
    for s in range(0, len(selection), batch_size):
        part = selection.slice(s, s + batch_size)
        gen = torch.Generator().manual_seed(derived_seed(seed, "query", s))
        trace = QueryTrace(marks) if marks else None
        adv, spent = attack_part(target, kind, oracle, optimizer, eps, budget, part, gen,
                                 None if start is None else start[s : s + batch_size], trace)
        clean, attacked, along = _measure(target, kind, part, adv, trace)
        log.add(clean, attacked)
        for m, figures in along.items():
            logs[m].add(clean, figures)
        used.append(spent)
        bar.update(len(part))
    bar.close()
    threat = _Threat(eps, oracle.eight_bit, budget)
    result = log.result(kind, eps, k, gallery, threat, time.time() - t0)
    if marks:
        result.extra["checkpoints"] = [
            {"queries": m, **{key: v for key, v in logs[m].result(
                kind, eps, k, gallery, threat, 0.0).figures.items()
                if key.endswith(("_after", "_after_se"))}} for m in marks]
    spent = torch.cat(used).double()
    result.extra.update({"queries_used": spent.mean().item(),
                         "queries_used_max": int(spent.max()), "query_budget": budget,
                         "queries_sent": oracle.queries, **oracle.describe(),
                         **optimizer.describe()})
    return result
