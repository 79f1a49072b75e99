"""Query-only attacks measured at the endpoint (issue 29): every figure is read from the
endpoint's own answers through its evaluation view (:mod:`advrank.oracles.evaluation`), and,
when a trusted local copy of the model is given, the same figures measured on it stand
beside them (named ``local:FIGURE``): a difference between the two is a finding about the
deployed system.

The attacked pictures are a :class:`QuerySet`: gallery members (``advrank attack --oracle``,
their own ids known and left out of their lists) or pictures from outside (an endpoint-only
audit's folder). The targets are drawn from what the endpoint shows of each clean query
(:func:`visible_selection`, the kind's :class:`~advrank.attacks.visible.EndpointForm`).
Evaluation queries (the clean lists, the figures before and after, each checkpoint's) are
counted apart from the attacks' budgets and recorded (``evaluation.evaluation_queries``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from advrank.attacks.base import AttackKind
from advrank.attacks.query.base import QueryOptimizer
from advrank.attacks.query.budget import OracleObjective, QueryCounter, ask
from advrank.attacks.selection import Selection
from advrank.attacks.threat import LinfThreatModel
from advrank.attacks.visible import EndpointForm, Pictures, endpoint_form
from advrank.core.runtime import derived_seed, progress_bar
from advrank.errors import AdvrankError
from advrank.experiments.results import AttackResult, RankLog
from advrank.oracles.base import Oracle
from advrank.oracles.evaluation import DEFAULT_K, EvaluationView


@dataclass
class QuerySet:
    """The T attacked pictures: ``images [T, C, H, W]`` in [0, 1], ``own [T]`` (each one's
    gallery id at the endpoint, -1 when it is not a member or not known) and ``anchors [T]``
    (what the selection calls them: gallery ids of members, else their positions)."""

    images: torch.Tensor
    own: torch.Tensor
    anchors: torch.Tensor

    def __post_init__(self):
        t = self.images.shape[0]
        if self.images.dim() != 4 or self.own.shape != (t,) or self.anchors.shape != (t,):
            raise AdvrankError(f"a query set is images [T, C, H, W] with own ids and anchors "
                               f"[T], got {list(self.images.shape)}, {list(self.own.shape)}, "
                               f"{list(self.anchors.shape)}")
        self.own, self.anchors = self.own.long().cpu(), self.anchors.long().cpu()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def outside(cls, images: torch.Tensor) -> QuerySet:
        """Pictures that are not (known) gallery members."""
        t = images.shape[0]
        return cls(images, torch.full((t,), -1, dtype=torch.long), torch.arange(t))


def visible_k(feedback) -> int:
    """The attacker's visible depth K: its ``topk:K``, or :data:`DEFAULT_K` at full."""
    return DEFAULT_K if feedback.k is None else int(feedback.k)


def visible_selection(kind: AttackKind, view: EvaluationView, queries: QuerySet, size: int,
                      gen: torch.Generator, given: Selection | None = None) -> Selection:
    """The attacks of ``kind`` on ``queries`` with targets drawn from the endpoint's clean
    lists (see :mod:`advrank.attacks.visible`), or ``given`` (a selection made elsewhere, in
    the queries' order) completed with what the form reads (own ids, the clean lists)."""
    form = endpoint_form(kind)
    lists = view.lists(queries.images, queries.own, form.list_depth(view.k))
    if given is None:
        return form.select(lists, queries.anchors, queries.own, size, view.k, gen)
    extra = {**given.extra, "own": queries.own}
    if form.list_figures:
        extra["clean"] = lists[:, : view.k]
    return Selection(given.anchors, given.targets, given.sp, extra, given.positions)


def endpoint_figures(forms: Sequence[EndpointForm], view: EvaluationView, images: torch.Tensor,
                     part: Selection) -> dict[str, torch.Tensor]:
    """The figures ``[B]`` of ``forms[0]`` and, named ``KIND:figure``, of the others, read
    from the endpoint for ``images [B, C, H, W]`` (uploaded by the view)."""
    out: dict[str, torch.Tensor] = {}
    for i, form in enumerate(forms):
        reading = view.read(images, part.extra["own"], form.named(part),
                            view.k if form.list_figures else 0, form.own_rank)
        prefix = "" if i == 0 else f"{form.kind.name}:"
        out.update({prefix + key: v for key, v in form.figures(reading, part, view).items()})
    return out


@dataclass
class EndpointRun:
    """What one query-only run holds: the ``kind`` and the ``also`` kinds measured on its
    images, the ``optimizer``, the ``oracle`` and its evaluation ``view``, the ``threat``
    (ball and budget), where the targets' pictures come from (``pictures``) and the local
    copy measured beside (``local``: ``local(part, images or None) -> {figure: [B]}``, the
    clean queries for None; None: endpoint figures alone); ``keep``: keep the adversarial
    images (:meth:`adversarial`), for a report's examples."""

    kind: AttackKind
    optimizer: QueryOptimizer
    oracle: Oracle
    view: EvaluationView
    threat: LinfThreatModel
    pictures: Pictures
    also: Sequence[AttackKind] = ()
    local: Callable[[Selection, torch.Tensor | None], dict[str, torch.Tensor]] | None = None
    keep: bool = False
    forms: list[EndpointForm] = field(init=False)
    kept: list[torch.Tensor] = field(init=False, default_factory=list)

    def __post_init__(self):
        self.forms = [endpoint_form(kind) for kind in (self.kind, *self.also)]

    def adversarial(self) -> torch.Tensor:
        """``[T, C, H, W]``: every batch's adversarial images (kept with ``keep``)."""
        if not self.kept:
            raise AdvrankError("the run kept no images (keep=False)")
        return torch.cat(self.kept)

    def attack(self, images: torch.Tensor, part: Selection, gen: torch.Generator,
               start: torch.Tensor | None, checkpoints: Sequence[int]):
        """One batch: ``(adversarial images [B, C, H, W], its ledger, {c: (best images
        within c queries, queries spent by then [B])}, goal met [B])``. With an
        early-stopping optimiser, the form's score says when an answer shows the goal."""
        counter = QueryCounter(len(part), self.threat.query_budget)
        score = self.forms[0].score(part, self.oracle.feedback,
                                    lambda x: ask(self.oracle, counter, x), self.pictures)
        goal = getattr(score, "goal", None) if self.optimizer.early_stop else None
        objective = OracleObjective(self.oracle, score, counter, score.named_items, checkpoints,
                                    goal)
        ball = self.threat.ball(images)
        adv, _ = self.optimizer.run(objective, ball, start, gen)
        return adv, counter, objective.snapshots(), objective.reached.clone()

    def figures(self, part: Selection, images: torch.Tensor | None,
                clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """The endpoint's figures of ``images`` (None: the clean pictures ``clean``) and the
        local copy's beside them (``local:``)."""
        out = endpoint_figures(self.forms, self.view, clean if images is None else images, part)
        if self.local is not None:
            out.update({f"local:{key}": v for key, v in self.local(part, images).items()})
        return out


def run_endpoint_attack(run: EndpointRun, queries: QuerySet, selection: Selection, eps: float,
                        k: int, seed: int = 0, batch_size: int = 256,
                        start: torch.Tensor | None = None, progress: bool | None = None,
                        checkpoints: Sequence[int] = ()) -> AttackResult:
    """The T attacks of ``selection`` (on ``queries``, in the same order) through
    ``run.oracle``, measured at the endpoint (see the module docstring). ``start [T, C, H,
    W]``: the optimiser's start points; ``checkpoints``: query counts whose best so far is
    measured too (``extra["checkpoints"]``). The result's headline is the form's (a rank
    where the view is full, else what a top-k list shows); its ``extra`` holds the ledger's
    counts (``queries_used``...), ``evaluation`` (the view and its queries) and
    ``figures_from``."""
    t0, log, ledgers, reached = time.time(), RankLog(), [], []
    sent0, eval0 = run.oracle.queries, run.view.queries
    logs: dict[int, tuple[RankLog, list[torch.Tensor]]] = {c: (RankLog(), [])
                                                           for c in checkpoints}
    bar = progress_bar(total=len(selection), desc=f"{run.kind.name} query-only eps={eps:g}",
                       unit="attack", enabled=progress)
    for s in range(0, len(selection), batch_size):
        part, images = selection.slice(s, s + batch_size), queries.images[s : s + batch_size]
        gen = torch.Generator().manual_seed(derived_seed(seed, "query", s))
        adv, ledger, snaps, met = run.attack(images, part, gen, None if start is None else
                                             start[s : s + batch_size], checkpoints)
        if run.keep:
            run.kept.append(adv.detach().cpu())
        clean = run.figures(part, None, images)
        log.add(clean, run.figures(part, adv, images))
        for c, (best, by_then) in snaps.items():
            logs[c][0].add(clean, run.figures(part, best, images))
            logs[c][1].append(by_then)
        ledgers.append(ledger)
        reached.append(met)
        bar.update(len(part))
    bar.close()
    size = GallerySize(run.oracle.gallery_size)
    result = log.result(run.kind, eps, k, size, run.threat, time.time() - t0)
    result.headline = run.forms[0].headline(run.view.full)
    sent = run.oracle.queries - sent0 - (run.view.queries - eval0)  # the attacks' own
    result.extra.update(query_record(ledgers, torch.cat(reached), run.threat.query_budget,
                                     sent))
    result.extra.update({**run.oracle.describe(), **run.optimizer.describe(),
                         "evaluation": run.view.describe(),
                         "figures_from": "endpoint" if run.local is None else
                         "endpoint, local copy beside (local:)"})
    if checkpoints:
        result.extra["checkpoints"] = {
            c: {**log_c.result(run.kind, eps, k, size, run.threat, 0.0).figures,
                "queries_used": torch.cat(by_then).double().mean().item()}
            for c, (log_c, by_then) in logs.items()}
    return result


class GallerySize:
    """A gallery's size where only ``len`` is read (:meth:`RankLog.result`)."""

    def __init__(self, n: int):
        self.n = int(n)

    def __len__(self) -> int:
        return self.n


def query_record(ledgers: Sequence[QueryCounter], met: torch.Tensor, budget: int, sent: int
                 ) -> dict[str, Any]:
    """What a result records of its queries: ``queries_used`` (mean per attack, charged by
    the ledgers), ``queries_used_max``, ``query_budget``, ``queries_sent`` (what the endpoint
    was sent for the attacks), ``queries_lost``; from ``met [T]`` (the goal seen: early stop)
    ``goal_reached`` (the share of attacks) and ``queries_saved`` (the budget those left
    unspent, mean per attack)."""
    spent = torch.cat([ledger.used for ledger in ledgers]).double()
    return {"queries_used": spent.mean().item(), "queries_used_max": int(spent.max()),
            "query_budget": budget, "queries_sent": sent,
            "queries_lost": sum(int(ledger.lost.sum()) for ledger in ledgers),
            "goal_reached": met.double().mean().item(),
            "queries_saved": torch.where(met, budget - spent, 0.0).mean().item()}
