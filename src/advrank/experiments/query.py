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
from advrank.attacks.feedback import FeedbackScore
from advrank.attacks.query.base import (
    Ball,
    Best,
    CountedObjective,
    QueryOptimizer,
    get_optimizer,
)
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
        self.best.update(x, values, met=self.met)
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
                start: torch.Tensor | None = None, checkpoints: Sequence[int] = ()
                ) -> tuple[torch.Tensor, torch.Tensor, dict, torch.Tensor]:
    """One batch of query-only attacks: ``(adversarial images [B, C, H, W], queries used
    [B], {c: (best images within c queries, queries spent by then [B])}, goal met [B])``;
    ``start [B, C, H, W]``: where the optimiser starts (default: the clean query). With an
    early-stopping optimiser, the kind's score says when an answer shows its goal."""
    gallery = target.gallery
    counter = QueryCounter(len(part), budget)
    score = kind.query_score(gallery, part, oracle.feedback,
                             lambda x: ask(oracle, counter, x))
    goal = getattr(score, "goal", None) if optimizer.early_stop else None

    def evaluate(x: torch.Tensor, rows: torch.Tensor):
        answer = oracle.answer(x, named_items(score, rows))
        values = score(answer, rows)
        return values if goal is None else (values, goal(answer, rows))

    objective = CheckpointedObjective(evaluate, counter, checkpoints)
    ball = Ball(gallery.images(part.anchors), eps, oracle.eight_bit)
    adv, _ = optimizer.run(objective, ball, start, generator)
    return (adv, counter.used, objective.snapshots() if checkpoints else {},
            objective.reached.clone())


def measure_all(target, kinds: Sequence[AttackKind], part: Selection,
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


def spending(used: torch.Tensor, met: torch.Tensor, budget: int) -> dict[str, Any]:
    """What ``used [T]`` queries per attack and ``met [T]`` (the goal seen, early stop) say:
    queries used (mean, max), the share of attacks that met their goal and the budget those
    left unspent (mean per attack)."""
    spent = used.double()
    return {"queries_used": spent.mean().item(), "queries_used_max": int(spent.max()),
            "query_budget": budget, "goal_reached": met.double().mean().item(),
            "queries_saved": torch.where(met, budget - spent, 0.0).mean().item()}


def run_query_attack(target, attack: str | AttackKind, oracle: Oracle,
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
    ``queries_used_max``, ``goal_reached`` (the share of attacks whose goal the feedback
    showed, with an early-stopping optimiser, else 0) and ``queries_saved`` (the budget those
    attacks left unspent, mean per attack), the oracle and the optimiser; batches draw from
    one generator each (keyed by seed and position), so results depend on ``batch_size``."""
    kind, optimizer = check_query_only(get_attack(attack)), get_optimizer(optimizer)
    check_number(eps, "eps (pixel units)", low=0.0, high=1.0)
    budget, seed = check_budget(budget), check_seed(seed)
    batch_size = check_batch_size(batch_size)
    check_progress(progress)
    gallery = target.gallery
    selection = selection or kind.select(gallery, k, num_attacks, seed)
    if start is not None and start.shape[0] != len(selection):
        raise AdvrankError(f"{start.shape[0]} start images for {len(selection)} attacks")
    t0, log, used, reached = time.time(), RankLog(), [], []
    checkpoints = check_checkpoints(checkpoints, budget)
    logs = {c: (RankLog(), []) for c in checkpoints}
    bar = progress_bar(total=len(selection), desc=f"{kind.name} query-only eps={eps:g}",
                       unit="attack", enabled=progress)
    for s in range(0, len(selection), batch_size):
        part = selection.slice(s, s + batch_size)
        gen = torch.Generator().manual_seed(derived_seed(seed, "query", s))
        adv, spent, snaps, met = attack_part(
            target, kind, oracle, optimizer, eps, budget, part, gen,
            None if start is None else start[s : s + batch_size], checkpoints)
        clean = measure_all(target, [kind, *also], part, None)
        log.add(clean, measure_all(target, [kind, *also], part, adv))
        for c, (images, by_then) in snaps.items():
            logs[c][0].add(clean, measure_all(target, [kind, *also], part, images))
            logs[c][1].append(by_then)
        used.append(spent)
        reached.append(met)
        bar.update(len(part))
    bar.close()
    threat = _Threat(eps, oracle.eight_bit, budget)
    result = log.result(kind, eps, k, gallery, threat, time.time() - t0)
    result.extra.update({**spending(torch.cat(used), torch.cat(reached), budget),
                         "queries_sent": oracle.queries, **oracle.describe(),
                         **optimizer.describe()})
    if checkpoints:
        result.extra["checkpoints"] = {
            c: {**log_c.result(kind, eps, k, gallery, threat, 0.0).figures,
                "queries_used": torch.cat(by_then).double().mean().item()}
            for c, (log_c, by_then) in logs.items()}
    return result
