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
from dataclasses import dataclass

import torch

from advrank.attacks.base import AttackKind, QueryScore, check_query_only, get_attack
from advrank.attacks.query.base import (
    Best,
    CountedObjective,
    QueryOptimizer,
    get_optimizer,
)
from advrank.attacks.selection import Selection
from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import check_number, check_progress, check_seed
from advrank.core.runtime import derived_seed, progress_bar
from advrank.core.target import SearchTarget
from advrank.errors import AdvrankError
from advrank.experiments.protocol import check_batch_size, embed_checked
from advrank.experiments.results import AttackResult, RankLog
from advrank.oracles.base import Oracle, QueryCounter, ask, check_budget


class CheckpointedObjective(CountedObjective):
    """A :class:`CountedObjective` that also keeps, per attack, the best candidate of the
    rounds completed within each query count of ``at``: what a run with that budget would
    have returned, for an optimiser whose run is a prefix of a longer one (NES, SPSA: the same
    draws, round by round; not the random search, whose window schedule follows the budget).
    A round is counted once it is sent whole; one that would pass a checkpoint is not."""

    def __init__(self, evaluate, counter: QueryCounter, at: Sequence[int]):
        super().__init__(evaluate, counter)
        self.at = sorted({check_budget(c) for c in at})
        self.best: Best | None = None
        self.taken: dict[int, torch.Tensor] = {}  # c -> [B] bool: snapshot taken
        self.snaps: dict[int, torch.Tensor] = {}
        self.used_at: dict[int, torch.Tensor] = {}  # c -> [B]: queries spent by then

    def __call__(self, x: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        before = self.counter.used.clone()
        values = super().__call__(x, active)
        if self.best is None:
            self.best = Best(x[:, 0], torch.full((x.shape[0],), math.inf))
            for c in self.at:
                self.snaps[c] = self.best.x.clone()
                self.taken[c] = torch.zeros(x.shape[0], dtype=torch.bool)
                self.used_at[c] = torch.zeros(x.shape[0], dtype=torch.long)
        for c in self.at:  # this round passes c: the best before it is the one at c
            passed = (self.counter.used > c) & (before <= c) & ~self.taken[c]
            mask = passed.to(x.device).view(-1, *([1] * (x.dim() - 2)))
            self.snaps[c] = torch.where(mask, self.best.x, self.snaps[c])
            self.used_at[c] = torch.where(passed, before, self.used_at[c])
            self.taken[c] |= passed
        self.best.update(x, values)
        return values

    def snapshots(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """``{c: (best images [B, C, H, W], queries spent [B])}`` at each checkpoint (the
        run's last best where it ended before c)."""
        out = {}
        for c in self.at:
            mask = self.taken[c].to(self.best.x.device).view(-1, *([1] * (self.best.x.dim() - 1)))
            out[c] = (torch.where(mask, self.snaps[c], self.best.x),
                      torch.where(self.taken[c], self.used_at[c], self.counter.used))
        return out


@dataclass(frozen=True)
class CountedAsk:
    """``ask(images [B, m, C, H, W]) -> (answer, rows, sent)``: the further queries a score
    needs (e.g. its targets' own neighbourhoods), each granted by the attacks' ``counter``."""

    oracle: Oracle
    counter: QueryCounter

    def __call__(self, images: torch.Tensor):
        return ask(self.oracle, self.counter, images)


@dataclass(frozen=True)
class ScoredAnswers:
    """``evaluate(x [N, C, H, W], rows [N]) -> [N]``: the oracle's answers for the candidates
    ``x`` of the attacks ``rows``, scored by ``score`` (the oracle is told which ids the score
    reads, so it may answer with their ranks alone)."""

    oracle: Oracle
    score: QueryScore

    def __call__(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.score(self.oracle.answer(x, self.score.named_items(rows)), rows)


def attack_part(target: SearchTarget, kind: AttackKind, oracle: Oracle,
                optimizer: QueryOptimizer, threat: LinfThreatModel, part: Selection,
                generator: torch.Generator, start: torch.Tensor | None = None,
                checkpoints: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One batch of query-only attacks within ``threat`` (its ball and query budget):
    ``(adversarial images [B, C, H, W], queries used [B], {c: (best images within c queries,
    queries spent by then [B])})``; ``start [B, C, H, W]``: where the optimiser starts
    (default: the clean query)."""
    gallery = target.gallery
    counter = QueryCounter(len(part), threat.query_budget)
    score = kind.query_score(gallery, part, oracle.feedback, CountedAsk(oracle, counter))
    objective = CheckpointedObjective(ScoredAnswers(oracle, score), counter, checkpoints)
    ball = threat.ball(gallery.images(part.anchors))
    adv, _ = optimizer.run(objective, ball, start, generator)
    return adv, counter.used, objective.snapshots() if checkpoints else {}


def measure_all(target: SearchTarget, kinds: Sequence[AttackKind], part: Selection,
                images: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The figures ``[B]`` of ``kinds[0]`` and, named ``KIND:figure``, of the others, for
    ``images`` (None: the clean queries, whose embeddings the gallery holds)."""
    gallery, emb = target.gallery, target.gallery.embeddings
    with torch.no_grad():
        e = emb[part.anchors.to(emb.device)] if images is None else \
            embed_checked(target.model, images)
        out = dict(kinds[0].measure(gallery, part, e))
        for other in kinds[1:]:
            out.update({f"{other.name}:{key}": v
                        for key, v in other.measure(gallery, part, e).items()})
    return out


def check_checkpoints(checkpoints: Sequence[int], budget: int) -> list[int]:
    """Query counts within the budget, sorted, each once."""
    out = sorted({check_budget(c) for c in checkpoints})
    if out and out[-1] > budget:
        raise AdvrankError(f"checkpoint {out[-1]} lies past the query budget {budget}")
    return out


def run_query_attack(target: SearchTarget, attack: str | AttackKind, oracle: Oracle,
                     optimizer: str | QueryOptimizer, eps: float, k: int, num_attacks: int,
                     budget: int, seed: int = 0, batch_size: int = 256,
                     selection: Selection | None = None, start: torch.Tensor | None = None,
                     progress: bool | None = None, also: Sequence[AttackKind] = (),
                     checkpoints: Sequence[int] = ()) -> AttackResult:
    """T = ``num_attacks`` query-only attacks of ``attack`` at ``eps`` with size ``k``, each
    within ``budget`` queries to ``oracle``, optimised by ``optimizer`` (a registered name or
    an instance). ``start [T, C, H, W]``: start points (e.g. a transfer attack's images, in
    selection order). ``also``: further kinds that measure the same images, their figures
    named ``KIND:figure`` (e.g. ES's disruption scored by ORDER's tau; ``selection`` must
    then be one they can read). ``checkpoints``: query counts at which the best so far is
    measured too (see :class:`CheckpointedObjective`), as ``extra["checkpoints"]``
    ``{c: figures}``. The result's ``extra`` holds ``queries_used`` (mean per attack),
    ``queries_used_max``, the oracle and the optimiser; batches draw from one generator each
    (keyed by seed and position), so results depend on ``batch_size``."""
    kind, optimizer = check_query_only(get_attack(attack)), get_optimizer(optimizer)
    check_number(eps, "eps (pixel units)", low=0.0, high=1.0)
    budget, seed = check_budget(budget), check_seed(seed)
    threat = LinfThreatModel(eps).for_queries(oracle.eight_bit, budget)
    batch_size = check_batch_size(batch_size)
    check_progress(progress)
    gallery = target.gallery
    selection = selection or kind.select(gallery, k, num_attacks, seed)
    if start is not None and start.shape[0] != len(selection):
        raise AdvrankError(f"{start.shape[0]} start images for {len(selection)} attacks")
    t0, log, used = time.time(), RankLog(), []
    checkpoints = check_checkpoints(checkpoints, budget)
    logs: dict[int, tuple[RankLog, list[torch.Tensor]]] = {c: (RankLog(), [])
                                                           for c in checkpoints}
    bar = progress_bar(total=len(selection), desc=f"{kind.name} query-only eps={eps:g}",
                       unit="attack", enabled=progress)
    for s in range(0, len(selection), batch_size):
        part = selection.slice(s, s + batch_size)
        gen = torch.Generator().manual_seed(derived_seed(seed, "query", s))
        adv, spent, snaps = attack_part(target, kind, oracle, optimizer, threat, part, gen,
                                        None if start is None else start[s : s + batch_size],
                                        checkpoints)
        clean = measure_all(target, [kind, *also], part, None)
        log.add(clean, measure_all(target, [kind, *also], part, adv))
        for c, (images, by_then) in snaps.items():
            logs[c][0].add(clean, measure_all(target, [kind, *also], part, images))
            logs[c][1].append(by_then)
        used.append(spent)
        bar.update(len(part))
    bar.close()
    result = log.result(kind, eps, k, gallery, threat, time.time() - t0)
    spent = torch.cat(used).double()
    result.extra.update({"queries_used": spent.mean().item(),
                         "queries_used_max": int(spent.max()), "query_budget": budget,
                         "queries_sent": oracle.queries, **oracle.describe(),
                         **optimizer.describe()})
    if checkpoints:
        result.extra["checkpoints"] = {
            c: {**log_c.result(kind, eps, k, gallery, threat, 0.0).figures,
                "queries_used": torch.cat(by_then).double().mean().item()}
            for c, (log_c, by_then) in logs.items()}
    return result
