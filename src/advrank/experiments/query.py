"""Query-only (black-box) attacks on a deployed search: the §4 selection and figures of a
ranked attack kind (QA+, QA-), optimised through an oracle's feedback alone within a query
budget per attack (see :mod:`advrank.oracles` and :mod:`advrank.attacks.query`).

The attacks are drawn from the local target's gallery (the service's ids when both are built
from the same checkpoint and data) and measured there exactly, as white-box results are, on
the candidate the optimiser queried (8-bit when the oracle uploads pictures). With an upload
pipeline on the oracle (``--pipeline jpeg:75``), every candidate goes through it before it is
sent, and the figures are measured on that upload (the clean query's upload "before", the
attacked one's "after"): the threat records the pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from advrank.attacks.base import AttackKind, check_query_only, get_attack
from advrank.attacks.query.base import QueryOptimizer, get_optimizer
from advrank.attacks.query.budget import OracleObjective, QueryCounter, ask, check_budget
from advrank.attacks.selection import Selection
from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import check_number, check_progress, check_seed
from advrank.core.runtime import derived_seed, progress_bar
from advrank.core.target import SearchTarget
from advrank.errors import AdvrankError
from advrank.experiments.protocol import check_batch_size, embed_checked
from advrank.experiments.results import AttackResult, RankLog
from advrank.oracles.base import Oracle


@dataclass(frozen=True)
class CountedAsk:
    """``ask(images [B, m, C, H, W]) -> (answer, rows, sent)``: the further queries a score
    needs (e.g. its targets' own neighbourhoods), each granted by the attacks' ``counter``."""

    oracle: Oracle
    counter: QueryCounter

    def __call__(self, images: torch.Tensor):
        return ask(self.oracle, self.counter, images)


def attack_part(target: SearchTarget, kind: AttackKind, oracle: Oracle,
                optimizer: QueryOptimizer, threat: LinfThreatModel, part: Selection,
                generator: torch.Generator, start: torch.Tensor | None = None,
                checkpoints: Sequence[int] = ()) -> tuple[torch.Tensor, QueryCounter, dict]:
    """One batch of query-only attacks within ``threat`` (its ball and query budget):
    ``(adversarial images [B, C, H, W], the ledger of its queries, {c: (best images within c
    queries, queries spent by then [B])})``; ``start [B, C, H, W]``: where the optimiser
    starts (default: the clean query)."""
    gallery = target.gallery
    counter = QueryCounter(len(part), threat.query_budget)
    score = kind.query_score(gallery, part, oracle.feedback, CountedAsk(oracle, counter))
    objective = OracleObjective(oracle, score, counter, score.named_items, checkpoints)
    ball = threat.ball(gallery.images(part.anchors))
    adv, _ = optimizer.run(objective, ball, start, generator)
    return adv, counter, objective.snapshots()


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


def measure_part(target: SearchTarget, kinds: Sequence[AttackKind], part: Selection, oracle: Oracle,
                 adv: torch.Tensor, snaps: dict, log: RankLog, logs: dict) -> None:
    """Add one batch's figures to ``log`` (and each checkpoint's to ``logs[c]``), measured
    on what ``oracle`` uploads: ``adv [B, C, H, W]`` and the snapshots through its pipeline,
    and then the clean queries too (else their embeddings, which the gallery holds)."""
    clean = measure_all(target, kinds, part, None if oracle.pipeline is None else
                        oracle.upload(target.gallery.images(part.anchors)))
    log.add(clean, measure_all(target, kinds, part, oracle.upload(adv)))
    for c, (images, by_then) in snaps.items():
        logs[c][0].add(clean, measure_all(target, kinds, part, oracle.upload(images)))
        logs[c][1].append(by_then)


def check_checkpoints(checkpoints: Sequence[int], budget: int) -> list[int]:
    """Query counts within the budget, sorted, each once."""
    out = sorted({check_budget(c) for c in checkpoints})
    if out and out[-1] > budget:
        raise AdvrankError(f"checkpoint {out[-1]} lies past the query budget {budget}")
    return out


def query_record(ledgers: Sequence[QueryCounter], budget: int, sent: int,
                 calibration: dict[str, Any] | None) -> dict[str, Any]:
    """What a result records of its queries: ``queries_used`` (mean per attack, charged by
    the ledgers), ``queries_used_max``, ``query_budget``, ``queries_sent`` (what the endpoint
    was sent for the attacks), ``queries_lost``, and ``calibration`` when it ran."""
    spent = torch.cat([ledger.used for ledger in ledgers]).double()
    out = {"queries_used": spent.mean().item(), "queries_used_max": int(spent.max()),
           "query_budget": budget, "queries_sent": sent,
           "queries_lost": sum(int(ledger.lost.sum()) for ledger in ledgers)}
    return out if calibration is None else {**out, "calibration": calibration}


def verify_endpoint(target: SearchTarget, oracle: Oracle, selection: Selection, verify: bool | None,
                    differs: bool) -> dict[str, Any] | None:
    """Calibrate ``oracle`` on the selection's clean queries (gallery members, so their own
    ids are known) against ``target`` before any attack (see
    :mod:`advrank.oracles.calibrate`): None when not asked (``verify`` None: asked for a
    remote endpoint only). Disagreement beyond tolerance raises unless ``differs``."""
    if not (oracle.remote if verify is None else verify):
        return None
    from advrank.oracles.calibrate import calibrate

    anchors = selection.anchors
    return calibrate(oracle, target.gallery.images(anchors), target, anchors,
                     differs=differs).describe()


def run_query_attack(target: SearchTarget, attack: str | AttackKind, oracle: Oracle,
                     optimizer: str | QueryOptimizer, eps: float, k: int, num_attacks: int,
                     budget: int, seed: int = 0, batch_size: int = 256,
                     selection: Selection | None = None, start: torch.Tensor | None = None,
                     progress: bool | None = None, also: Sequence[AttackKind] = (),
                     checkpoints: Sequence[int] = (), verify: bool | None = None,
                     endpoint_differs: bool = False) -> AttackResult:
    """T = ``num_attacks`` query-only attacks of ``attack`` at ``eps`` with size ``k``, each
    within ``budget`` queries to ``oracle``, optimised by ``optimizer`` (a registered name or
    an instance). ``start [T, C, H, W]``: start points (e.g. a transfer attack's images, in
    selection order). ``also``: further kinds that measure the same images, their figures
    named ``KIND:figure`` (e.g. ES's disruption scored by ORDER's tau; ``selection`` must
    then be one they can read). ``checkpoints``: query counts at which the best so far is
    measured too (see :class:`advrank.attacks.query.budget.Checkpoints`), as
    ``extra["checkpoints"]`` ``{c: figures}``. ``verify``: calibrate the endpoint first
    (:func:`verify_endpoint`; default: a remote one), ``endpoint_differs``: it is expected to
    differ from the local copy (figures recorded, no error). The result's ``extra`` holds
    ``queries_used`` (mean per attack), ``queries_used_max``, ``queries_sent`` (what the
    endpoint was sent for the attacks), ``queries_lost``, ``calibration`` (when run), the
    oracle and the optimiser; batches draw from one generator each (keyed by seed and
    position), so results depend on ``batch_size``."""
    kind, optimizer = check_query_only(get_attack(attack)), get_optimizer(optimizer)
    check_number(eps, "eps (pixel units)", low=0.0, high=1.0)
    budget, seed = check_budget(budget), check_seed(seed)
    batch_size = check_batch_size(batch_size)
    check_progress(progress)
    gallery = target.gallery
    selection = selection or kind.select(gallery, k, num_attacks, seed)
    if start is not None and start.shape[0] != len(selection):
        raise AdvrankError(f"{start.shape[0]} start images for {len(selection)} attacks")
    threat = LinfThreatModel(eps, pipeline=oracle.pipeline).for_queries(oracle.eight_bit,
                                                                         budget)
    checkpoints = check_checkpoints(checkpoints, budget)
    calibration = verify_endpoint(target, oracle, selection, verify, endpoint_differs)
    t0, log, ledgers, sent0 = time.time(), RankLog(), [], oracle.queries
    logs: dict[int, tuple[RankLog, list[torch.Tensor]]] = {c: (RankLog(), [])
                                                           for c in checkpoints}
    bar = progress_bar(total=len(selection), desc=f"{kind.name} query-only eps={eps:g}",
                       unit="attack", enabled=progress)
    for s in range(0, len(selection), batch_size):
        part = selection.slice(s, s + batch_size)
        gen = torch.Generator().manual_seed(derived_seed(seed, "query", s))
        adv, ledger, snaps = attack_part(target, kind, oracle, optimizer, threat, part, gen,
                                         None if start is None else start[s : s + batch_size],
                                         checkpoints)
        measure_part(target, [kind, *also], part, oracle, adv, snaps, log, logs)
        ledgers.append(ledger)
        bar.update(len(part))
    bar.close()
    result = log.result(kind, eps, k, gallery, threat, time.time() - t0)
    result.extra.update(query_record(ledgers, budget, oracle.queries - sent0, calibration))
    result.extra.update({**oracle.describe(), **optimizer.describe()})
    if checkpoints:
        result.extra["checkpoints"] = {
            c: {**log_c.result(kind, eps, k, gallery, threat, 0.0).figures,
                "queries_used": torch.cat(by_then).double().mean().item()}
            for c, (log_c, by_then) in logs.items()}
    return result
