"""The query budget's one home: the ledger that grants, counts and checkpoints the queries of
B attacks run side by side (each with its own hard budget).

* :class:`QueryCounter`: queries charged to each attack. A batch of requests is *granted*
  (:meth:`QueryCounter.grant`: the first ``min(wanted, remaining)`` of each attack; the rest
  are never sent); a request the oracle must send again (a dropped connection, a 503/429) is
  *charged* one more query before it goes (:meth:`QueryCounter.charge`, handed to the oracle
  as ``resend``); with no budget left it is not sent and the oracle marks it lost.
* :func:`granted` / :func:`ask`: the granted requests of ``x [B, P, ...]`` and the oracle's
  answer to them.
* :class:`CountedObjective`: what an optimiser minimises, ``[B, P]`` values (+inf where a
  request was not sent or lost), with, per attack, the best candidate of the rounds completed
  within each query count of ``at`` (what a run with that budget would have returned);
  :class:`OracleObjective`: the same for a score read from an oracle's answers.

``queries_used`` in results is :attr:`QueryCounter.used` (what the ledger charged); it equals
what the endpoint was sent (``oracle.queries``) when the oracle is used through the ledger
alone. Lost requests are counted in :attr:`QueryCounter.lost`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from advrank.core.checks import check_finite, check_int
from advrank.oracles.base import Answer, Oracle

MAX_BUDGET = 10**9


def check_budget(budget: Any) -> int:
    """A query budget per attack: a positive integer (NaN, 0 and negatives refused)."""
    if isinstance(budget, float) and budget.is_integer():
        budget = int(budget)
    return check_int(budget, "query budget", low=1, high=MAX_BUDGET)


class QueryCounter:
    """Queries charged to each of B attacks (``used [B]``), against a hard ``budget`` per
    attack; ``lost [B]``: requests sent but never answered (see :class:`Answer`)."""

    def __init__(self, num_attacks: int, budget: int):
        self.budget = check_budget(budget)
        self.used = torch.zeros(check_int(num_attacks, "number of attacks", low=0,
                                          high=2**40), dtype=torch.long)
        self.lost = torch.zeros_like(self.used)

    @property
    def remaining(self) -> torch.Tensor:
        """``[B]`` queries each attack may still send."""
        return self.budget - self.used

    def grant(self, wanted: int, active: torch.Tensor | None = None) -> torch.Tensor:
        """``sent [B, wanted]`` (bool): the first min(wanted, remaining) requests of each
        active attack, now counted as used; the others are never to be sent."""
        active = torch.ones_like(self.used, dtype=torch.bool) if active is None else active
        allowed = torch.where(active.cpu(), self.remaining.clamp(0, wanted), 0)
        sent = torch.arange(wanted)[None, :] < allowed[:, None]
        self.used += allowed
        return sent

    def charge(self, attack: int) -> bool:
        """One more request of ``attack`` (a resend): True, and counted, when its budget pays
        for it; False (nothing counted: the request is not to be sent) otherwise."""
        if int(self.used[attack]) >= self.budget:
            return False
        self.used[attack] += 1
        return True

    def resender(self, rows: torch.Tensor) -> Callable[[int], bool]:
        """``resend(i) -> bool`` for an oracle answering requests of the attacks ``rows [N]``:
        charges request i's attack (:meth:`charge`)."""
        owner = rows.tolist()
        return lambda i: self.charge(owner[i])

    def record(self, rows: torch.Tensor, answer: Answer) -> None:
        """Count the lost requests of ``answer`` (one per row of ``rows [N]``)."""
        if answer.lost.any():
            self.lost.index_add_(0, rows[answer.lost], torch.ones(int(answer.lost.sum()),
                                                                  dtype=torch.long))


def granted(counter: QueryCounter, x: torch.Tensor, active: torch.Tensor | None = None):
    """The requests of ``x [B, P, ...]`` that the budget lets through: ``(x[sent] [N, ...],
    rows [N] (each one's attack), sent [B, P])``; the others are never sent."""
    sent = counter.grant(x.shape[1], active)
    rows = torch.arange(x.shape[0])[:, None].expand(sent.shape)[sent]
    return x[sent.to(x.device)], rows, sent


def ask(oracle: Oracle, counter: QueryCounter, x: torch.Tensor,
        active: torch.Tensor | None = None) -> tuple[Answer, torch.Tensor, torch.Tensor]:
    """``oracle``'s answer for the requests of ``x [B, P, C, H, W]`` within the budget (its
    resends charged too): ``(answer over the N sent, rows [N], sent [B, P])``. A lost request
    answers no ids (-1 throughout its row)."""
    flat, rows, sent = granted(counter, x, active)
    answer = oracle.answer(flat, resend=counter.resender(rows))
    counter.record(rows, answer)
    return answer, rows, sent


class Best:
    """The best candidate queried so far per attack: ``x [B, ...]`` and its value ``[B]``."""

    def __init__(self, x: torch.Tensor, value: torch.Tensor):
        self.x, self.value = x.clone(), value.clone()

    def update(self, cand: torch.Tensor, values: torch.Tensor, ties: bool = False) -> None:
        """Keep each attack's best of ``cand [B, P, ...]`` (``values [B, P]``) when it beats
        the best so far (or equals it, with ``ties``)."""
        v, j = values.min(1)
        better = (v <= self.value) if ties else (v < self.value)
        better &= torch.isfinite(v)
        pick = cand[torch.arange(cand.shape[0], device=cand.device), j.to(cand.device)]
        mask = better.to(cand.device).view(-1, *([1] * (cand.dim() - 2)))
        self.x = torch.where(mask, pick, self.x)
        self.value = torch.where(better, v, self.value)


class Checkpoints:
    """Per attack, the best candidate of the rounds completed within each query count of
    ``at``: what a run with that budget would have returned, for an optimiser whose run is a
    prefix of a longer one (NES, SPSA: the same draws, round by round; not the random search,
    whose window schedule follows the budget). A round is counted once it is sent whole; one
    that would pass a checkpoint is not."""

    def __init__(self, at: Sequence[int]):
        self.at = sorted({check_budget(c) for c in at})
        self.best: Best | None = None
        self.taken: dict[int, torch.Tensor] = {}  # c -> [B] bool: snapshot taken
        self.snaps: dict[int, torch.Tensor] = {}
        self.used_at: dict[int, torch.Tensor] = {}  # c -> [B]: queries spent by then

    def record(self, x: torch.Tensor, values: torch.Tensor, before: torch.Tensor,
               after: torch.Tensor) -> None:
        """One round: candidates ``x [B, P, ...]``, their ``values [B, P]``, the queries
        charged before and after it (``[B]`` each)."""
        if self.best is None:
            self.best = Best(x[:, 0], torch.full((x.shape[0],), math.inf))
            for c in self.at:
                self.snaps[c] = self.best.x.clone()
                self.taken[c] = torch.zeros(x.shape[0], dtype=torch.bool)
                self.used_at[c] = torch.zeros(x.shape[0], dtype=torch.long)
        for c in self.at:  # this round passes c: the best before it is the one at c
            passed = (after > c) & (before <= c) & ~self.taken[c]
            mask = passed.to(x.device).view(-1, *([1] * (x.dim() - 2)))
            self.snaps[c] = torch.where(mask, self.best.x, self.snaps[c])
            self.used_at[c] = torch.where(passed, before, self.used_at[c])
            self.taken[c] |= passed
        self.best.update(x, values)

    def snapshots(self, used: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """``{c: (best images [B, C, H, W], queries spent [B])}`` at each checkpoint (the
        run's last best where it ended before c; ``used [B]``: the run's queries)."""
        if self.best is None:
            return {}
        out = {}
        for c in self.at:
            mask = self.taken[c].to(self.best.x.device).view(-1, *([1] * (self.best.x.dim() - 1)))
            out[c] = (torch.where(mask, self.snaps[c], self.best.x),
                      torch.where(self.taken[c], self.used_at[c], used))
        return out


class CountedObjective:
    """``evaluate(x [N, C, H, W], rows [N]) -> [N]`` (rows: each candidate's attack) as an
    optimiser's objective over ``[B, P, ...]``, each request first granted by ``counter``;
    ``at``: query counts whose best-so-far :meth:`snapshots` keeps (:class:`Checkpoints`)."""

    def __init__(self, evaluate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
                 counter: QueryCounter, at: Sequence[int] = ()):
        self.evaluate, self.counter = evaluate, counter
        self.marks = Checkpoints(at) if at else None

    def values(self, flat: torch.Tensor, rows: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values [N], lost [N] bool)`` of the granted requests ``flat [N, ...]``."""
        values = self.evaluate(flat, rows)
        return values, torch.zeros(values.shape[0], dtype=torch.bool)

    def __call__(self, x: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        before = self.counter.used.clone()
        flat, rows, sent = granted(self.counter, x, active)
        out = torch.full(sent.shape, math.inf)
        if rows.numel():
            values, lost = self.values(flat, rows)
            values = values.detach().float().cpu()
            check_finite(values[~lost], "the query-only objective")
            out[sent] = values.masked_fill(lost, math.inf)  # a lost request: as not sent
        if self.marks is not None:
            self.marks.record(x, out, before, self.counter.used)
        return out

    def affords(self, cost: int) -> torch.Tensor:
        """``[B]``: the attacks whose budget pays for ``cost`` more queries."""
        return self.counter.remaining >= cost

    def snapshots(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """See :meth:`Checkpoints.snapshots` (empty without ``at``)."""
        return {} if self.marks is None else self.marks.snapshots(self.counter.used)


class OracleObjective(CountedObjective):
    """``score(oracle's answer, rows [N]) -> [N]`` as a :class:`CountedObjective`: the granted
    requests go to ``oracle`` (``named(rows) -> [N, j]`` or None: the ids whose positions the
    score reads, see :meth:`Oracle.answer`), their resends charged to the ledger; a lost
    request's value is +inf and it is never measured."""

    def __init__(self, oracle: Oracle, score: Callable[[Answer, torch.Tensor], torch.Tensor],
                 counter: QueryCounter,
                 named: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
                 at: Sequence[int] = ()):
        super().__init__(None, counter, at)
        self.oracle, self.score, self.named = oracle, score, named

    def values(self, flat, rows):
        named = None if self.named is None else self.named(rows)
        answer = self.oracle.answer(flat, named, resend=self.counter.resender(rows))
        self.counter.record(rows, answer)
        return self.score(answer, rows), answer.lost
