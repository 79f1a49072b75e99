"""Query-only (black-box) attacks on a deployed search through an oracle, by the local
target's gallery: T queries drawn from it (its members, whose own ids the endpoint shares),
optimised through the oracle's feedback alone within a query budget per attack (see
:mod:`advrank.oracles` and :mod:`advrank.attacks.query`).

Every figure is read from the endpoint itself (:mod:`advrank.experiments.endpoint`: its
evaluation view, the richest it offers), and the local copy's figures stand beside them
(``local:FIGURE``) on the candidate the optimiser queried, as the endpoint's model is given
it (8-bit when the oracle uploads pictures; through the oracle's upload ``--pipeline`` and
a pipeline the service declares, the clean query's upload "before"). A remote endpoint is
calibrated against the local copy first (:mod:`advrank.oracles.calibrate`); one declared to
differ (``endpoint_differs``) is measured alone: no local figures, its ids not taken for
the local gallery's (the queries' own copies are then results like any other, and the
targets' pictures are the service's).

Targets: at ``full`` feedback on a trusted endpoint, the kind's §4 selection; otherwise
they are drawn from what the endpoint shows of each clean query
(:mod:`advrank.attacks.visible`: QA- within the visible top K, QA+ from just beyond it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from advrank.attacks.base import AttackKind, check_query_only, get_attack, select_anchors
from advrank.attacks.query.base import QueryOptimizer, get_optimizer
from advrank.attacks.query.budget import check_budget
from advrank.attacks.selection import Selection
from advrank.attacks.threat import LinfThreatModel
from advrank.attacks.visible import Pictures
from advrank.core.checks import check_number, check_progress, check_seed
from advrank.core.target import SearchTarget
from advrank.errors import AdvrankError
from advrank.experiments.endpoint import (
    EndpointRun,
    QuerySet,
    run_endpoint_attack,
    visible_k,
    visible_selection,
)
from advrank.experiments.protocol import check_batch_size, embed_checked
from advrank.experiments.results import AttackResult
from advrank.oracles.base import Oracle
from advrank.oracles.evaluation import EvaluationView


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


def local_figures(target: SearchTarget, kinds: Sequence[AttackKind], oracle: Oracle
                  ) -> Callable[[Selection, torch.Tensor | None], dict[str, torch.Tensor]]:
    """``figures(part, images)``: the local copy's figures of ``images [B, C, H, W]`` as the
    endpoint's model is given them, as far as the client knows (:meth:`Oracle.seen`: the
    upload pipeline, the 8-bit encoding, a pipeline the service declares); None: the clean
    queries (the embeddings the gallery holds, unless those steps change them)."""
    def figures(part: Selection, images: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if images is None:
            clean = target.gallery.images(part.anchors)
            seen = oracle.seen(clean)
            return measure_all(target, kinds, part, None if torch.equal(seen, clean) else seen)
        return measure_all(target, kinds, part, oracle.seen(images))

    return figures


def check_checkpoints(checkpoints: Sequence[int], budget: int) -> list[int]:
    """Query counts within the budget, sorted, each once."""
    out = sorted({check_budget(c) for c in checkpoints})
    if out and out[-1] > budget:
        raise AdvrankError(f"checkpoint {out[-1]} lies past the query budget {budget}")
    return out


def verify_endpoint(target: SearchTarget | None, oracle: Oracle, images: torch.Tensor,
                    ids: torch.Tensor | None, verify: bool | None,
                    differs: bool) -> dict[str, Any] | None:
    """Calibrate ``oracle`` on the clean queries ``images [T, C, H, W]`` (gallery members
    ``ids [T]`` when known) against ``target`` (None: the endpoint alone) before any attack
    (see :mod:`advrank.oracles.calibrate`): None when not asked (``verify`` None: asked for
    a remote endpoint only). Disagreement beyond tolerance raises unless ``differs``."""
    if not (oracle.remote if verify is None else verify):
        return None
    from advrank.oracles.calibrate import calibrate

    return calibrate(oracle, images, target, ids, differs=differs).describe()


def run_query_attack(target: SearchTarget, attack: str | AttackKind, oracle: Oracle,
                     optimizer: str | QueryOptimizer, eps: float, k: int, num_attacks: int,
                     budget: int, seed: int = 0, batch_size: int = 256,
                     selection: Selection | None = None, start: torch.Tensor | None = None,
                     progress: bool | None = None, also: Sequence[AttackKind] = (),
                     checkpoints: Sequence[int] = (), verify: bool | None = None,
                     endpoint_differs: bool = False) -> AttackResult:
    """T = ``num_attacks`` query-only attacks of ``attack`` at ``eps`` with size ``k``, each
    within ``budget`` queries to ``oracle``, optimised by ``optimizer`` (a registered name or
    an instance), measured at the endpoint with the local copy's figures beside (see the
    module docstring). ``selection``: the attacks (default: the module docstring's rule).
    ``start [T, C, H, W]``: start points (e.g. a transfer attack's images, in selection
    order). ``also``: further kinds that measure the same images, their figures
    named ``KIND:figure`` (e.g. ES's disruption scored by ORDER's tau; ``selection`` must
    then be one they can read). ``checkpoints``: query counts at which the best so far is
    measured too (see :class:`advrank.attacks.query.budget.Checkpoints`), as
    ``extra["checkpoints"]`` ``{c: figures}``. ``verify``: calibrate the endpoint first
    (:func:`verify_endpoint`; default: a remote one), ``endpoint_differs``: it is expected to
    differ from the local copy (its figures alone, no error). The result's ``extra`` holds
    ``queries_used`` (mean per attack), ``queries_used_max``, ``queries_sent`` (what the
    endpoint was sent for the attacks), ``queries_lost``, ``goal_reached`` (the share of
    attacks whose goal the feedback showed, with an early-stopping optimiser, else 0),
    ``queries_saved`` (the budget those left unspent, mean per attack), ``evaluation`` (the
    view and its queries, counted apart), ``calibration`` (when run), the oracle and the optimiser;
    batches draw from one generator each (keyed by seed and position), so results depend
    on ``batch_size``."""
    kind, optimizer = check_query_only(get_attack(attack)), get_optimizer(optimizer)
    check_number(eps, "eps (pixel units)", low=0.0, high=1.0)
    budget, seed = check_budget(budget), check_seed(seed)
    batch_size = check_batch_size(batch_size)
    check_progress(progress)
    gallery = target.gallery
    anchors, gen = (selection.anchors, None) if selection is not None else \
        select_anchors(kind, gallery, k, num_attacks, seed)
    if start is not None and start.shape[0] != len(anchors):
        raise AdvrankError(f"{start.shape[0]} start images for {len(anchors)} attacks")
    threat = LinfThreatModel(eps, pipeline=oracle.pipeline).for_queries(oracle.eight_bit,
                                                                         budget)
    checkpoints = check_checkpoints(checkpoints, budget)
    images = gallery.images(anchors)
    calibration = verify_endpoint(target, oracle, images, anchors, verify, endpoint_differs)
    trusted = not endpoint_differs
    queries = QuerySet(images, anchors if trusted else torch.full_like(anchors, -1), anchors)
    view = EvaluationView(oracle, visible_k(oracle.feedback))
    if selection is None and trusted and oracle.feedback.level == "full":
        selection = kind.select(gallery, k, num_attacks, seed)  # §4: all of it is visible
    selection = visible_selection(kind, view, queries, k, gen, selection)
    run = EndpointRun(kind, optimizer, oracle, view, threat,
                      Pictures(oracle.gallery_size, gallery.images if trusted else
                               oracle.pictures), also,
                      local_figures(target, [kind, *also], oracle) if trusted else None)
    result = run_endpoint_attack(run, queries, selection, eps, k, seed, batch_size, start,
                                 progress, checkpoints)
    if calibration is not None:
        result.extra["calibration"] = calibration
    return result
