"""The audit's plan: every cell left, priced from a timed probe of its own kind of work.

Probes, each on one batch of the run's real selections, after one untimed pass of the model
(whose first call pays one-off set-up costs that must not be multiplied by thousands of steps):

* **PGD step** (:func:`pgd_step_seconds`): a step of each attack kind, as the cells run it
  (the model's forward and backward, the kind's objective, the pipeline when attacked through),
  timed after an untimed run of the kind;
* **measurement** (:func:`measure_seconds`): the adversarial images embedded and measured as a
  cell measures them (the kind's figures, the index search, the upload pipeline's round trip);
* **query-only round** (:func:`query_seconds`): a few queries of each query-only kind through
  the oracle the cells use, on one batch; the cost per query of one attack;
* the transfer source's PGD step (its own model) for the transfer cells;
* **catalog round** (:meth:`~advrank.experiments.audit.catalog.CatalogLink.round_seconds`):
  one upload to the writable service, its w searches and its deletion, timed.

A white-box cell costs its batches x (eta steps + one measurement), plus the clean
measurement of its selection once per column; a query-only cell its attacks x its budget x
the cost per query; a catalog upload cell a white-box cell's steps plus T rounds, a catalog
query cell T x its rounds (min(uploads, searches / w) per attack); the example panels their
pools' steps. :mod:`.timing` turns the plan into
the printed estimate, corrects it as cells finish and drives the progress bar.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from advrank.attacks.base import AttackKind
from advrank.attacks.selection import Selection
from advrank.experiments.audit.panels import EXAMPLE_POOL
from advrank.experiments.audit.settings import AuditConfig
from advrank.experiments.target import Target

#: an audit estimated beyond this many seconds is announced with a warning and the quick look
LONG_AUDIT_SECONDS = 30 * 60
#: queries per attack of the query-only probe: a fiftieth of the budget, at least this many
QUERY_PROBE_MIN = 10
#: attacks whose measurement is timed (and scaled to the batch)
MEASURE_PROBE = 32
#: queries whose retrieval figures are timed (and scaled to the retrieval cell's)
RETRIEVAL_PROBE = 100


@dataclass
class CellPlan:
    """One unit of work left: its store ``key`` (``panels`` for the example panels), its
    ``group`` (``white-box``, ``query-only``, ``transfer``, ``catalog``, ``catalog-query``,
    ``panels``: cells of one group are corrected together), the ``attacks`` it runs (for
    the progress bar) and its estimated ``seconds``."""

    key: str
    group: str
    attacks: int
    seconds: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, work: Callable[[], Any]) -> float:
    _sync(device)
    start = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - start


def probe_seconds(target: Target, batch: int, backward: bool = True) -> float:
    """Wall-clock seconds of one forward and backward pass of the model on ``batch`` members
    of X (``backward=False``: the forward pass alone). A batch that does not fit the memory is
    probed in halves (as the attacks run it) and the time scaled back up. The audit calls it
    once, untimed, to warm the model up before its probes."""
    g = target.gallery
    size = min(batch, len(g))
    while True:
        images = g.images(torch.arange(size)).requires_grad_(backward)
        try:
            def work(images=images):
                with torch.set_grad_enabled(backward):  # the input's gradient, as PGD takes it
                    out = target.model(images)
                    if backward:
                        torch.autograd.grad(out.sum(), images)

            return _timed(g.device, work) * min(batch, len(g)) / size
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            del images
            if g.device.type == "cuda":
                torch.cuda.empty_cache()


def short_threat(config: AuditConfig, kind: AttackKind, eps: float, steps: int):
    """The threat model of ``kind``'s cells at ``eps``, cut to ``steps`` PGD steps."""
    return kind.threat_for(replace(config.threat(eps, kind), steps=steps))


def pgd_step_seconds(target: Target, kind: AttackKind, config: AuditConfig, part: Selection,
                     eps: float) -> float:
    """Seconds of one PGD step of ``kind`` on the batch ``part`` of its selection, at ``eps``,
    exactly as a cell runs it (objective prepared, the pipeline when attacked through): a
    run of one step, untimed (the kind's first call pays for its set-up, as the first batch
    of a cell does once), then the same run timed (the batch's fixed costs, small beside a
    step, counted with it)."""
    from advrank.experiments.protocol import attack_batches

    def run(steps: int) -> None:
        for _ in attack_batches(target.model, target.gallery, kind,
                                short_threat(config, kind, eps, steps), part, config.seed,
                                len(part), progress=False):
            pass

    run(1)
    return _timed(target.gallery.device, lambda: run(1))


def measure_seconds(target: Target, kind: AttackKind, config: AuditConfig, part: Selection,
                    eps: float, index=None) -> float:
    """Seconds to embed and measure the batch ``part`` of attacked images as a cell does: the
    kind's figures, and the index search and upload pipeline when the audit has them. Timed
    on its first :data:`MEASURE_PROBE` attacks (after an untimed pass: first calls pay their
    set-up) and scaled to the batch: the work is per attack (a forward pass, a count over the
    gallery, an insertion into the index, an encoding)."""
    from advrank.core.execution import BatchSplitter
    from advrank.experiments.protocol import Measurement, embed_checked

    g = target.gallery
    sample = part.slice(0, min(len(part), MEASURE_PROBE))
    splitter = BatchSplitter(len(sample), "probe", device=g.device)
    measure = Measurement(target.model, g, kind, config.threat(eps, kind), splitter, index)
    images = g.images(sample.anchors)

    def work() -> None:
        measure(sample, embed_checked(target.model, images, splitter), images)

    work()
    return _timed(g.device, work) * len(part) / len(sample)


def retrieval_seconds(target: Target, config: AuditConfig) -> float:
    """Seconds of the retrieval cell: Recall@K and mAP of :data:`RETRIEVAL_PROBE` queries,
    timed and scaled to the queries the cell measures (each ranks the whole gallery)."""
    from advrank.experiments.audit.retrieval import retrieval_figures

    n = len(target.gallery)
    queries = len(target.queries[1]) if target.queries is not None else \
        min(n, config.max_queries)
    if target.queries is not None:  # the split is measured whole: time it at its size
        return _timed(target.gallery.device,
                      lambda: retrieval_figures(target, config.max_queries, config.seed))
    sample = min(queries, RETRIEVAL_PROBE)
    return _timed(target.gallery.device, lambda: retrieval_figures(
        target, sample, config.seed)) * queries / sample


def query_probe_budget(budget: int) -> int:
    """The queries per attack of the query-only probe (at most the budget)."""
    return min(budget, max(QUERY_PROBE_MIN, budget // 50))


def query_seconds(target: Target, kind: AttackKind, config: AuditConfig, part: Selection,
                  eps: float, oracle) -> tuple[float, float]:
    """``(seconds per query of one attack, seconds of one measurement of the batch)``: a short
    query-only run (:func:`query_probe_budget` queries per attack) of ``kind`` on the batch
    ``part`` through ``oracle`` (a probe's own oracle, so that the cells' query counts stay
    theirs), its two measurements (the clean and the attacked figures, timed once more
    here) taken off, divided by the queries it sent."""
    from advrank.experiments.query import measure_all, run_query_attack

    budget = query_probe_budget(config.query_budget or 1)
    result = run_query_attack(target, kind, oracle, config.optimizer, float(eps),
                              config.size(kind), len(part), budget, seed=config.seed,
                              batch_size=len(part), selection=part, progress=False)
    images = target.gallery.images(part.anchors)
    measure = _timed(target.gallery.device, lambda: measure_all(target, [kind], part, images))
    sent = max(1.0, result.extra["queries_used"] * len(part))
    return max(result.seconds - 2 * measure, result.seconds / 2) / sent, measure


def batches_of(t: int, batch: int) -> int:
    return -(-t // batch)


def batch_share(batch: int, probed: int) -> float:
    """What a step on ``batch`` attacks costs, as a share of one on ``probed`` attacks: less
    for a smaller batch, but not proportionally (a step has fixed costs, taken as a fifth)."""
    return 1.0 if batch >= probed else 0.2 + 0.8 * batch / probed


def panel_cost(step: float, pool: int, batch: int, eta: int) -> float:
    """The example panels of one kind: ``eta`` steps over its pool of ``pool`` attacks, from
    the step cost of a ``batch``-attack batch."""
    return eta * step * batch_share(min(pool, batch), batch) * batches_of(pool, batch)


def white_box_cost(step: float, measure: float, eta: int, batches: int) -> float:
    """A white-box cell: each batch runs ``eta`` steps and one measurement (eps 0: none)."""
    return batches * (eta * step + measure) if eta else 0.0


def query_cost(per_query: float, t: int, budget: int, measure: float, batches: int,
               marks: int) -> float:
    """A query-only cell: T attacks x the budget x the seconds per query, and the
    measurement of each batch at each query mark and at the end."""
    return per_query * t * budget + measure * batches * (marks + 1)



@dataclass
class Work:
    """The cells an audit has left, each ``(key, attack, eps)``: white-box, query-only and
    transfer cells; ``panels``: whether the example panels run at the end; ``retrieval``:
    whether Recall@K and mAP are still to measure; ``catalog``: the catalog cells (keys
    ``catalog|...``: uploads of white-box images; ``catalog-query|...``: query-only)."""

    white_box: list[tuple[str, str, float]]
    query: list[tuple[str, str, float]]
    transfer: list[tuple[str, str, float]]
    panels: bool
    retrieval: bool = False
    catalog: list[tuple[str, str, float]] = field(default_factory=list)


def _probes(target: Target, kinds: dict[str, AttackKind], config: AuditConfig, t: int,
            select: Callable[[str], Selection], work: Work, index=None,
            source: Target | None = None, oracle: Callable[[], Any] | None = None,
            link=None) -> dict[str, Any]:
    """Time each kind of work the cells left will do (see the module's docstring)."""
    batch = min(config.batch_size, t)
    eps_max = max(float(e) for e in config.eps_values)
    uploaded = {a for key, a, _ in work.catalog if key.startswith("catalog|")}
    stepping = {a for _, a, e in work.white_box if float(e) > 0} | uploaded
    if work.panels and eps_max > 0:
        stepping |= set(kinds)
    measured = {a for _, a, _ in work.white_box + work.transfer} | uploaded
    moved = {a for _, a, _ in work.transfer}
    out: dict[str, Any] = {"batch": batch, "pgd_step": {}, "measure": {}, "per_query": {},
                           "query_measure": {}, "source_step": {}, "catalog_round": {}}
    start = time.perf_counter()
    if stepping or measured:
        probe_seconds(target, batch)  # untimed: the model's first call pays its set-up
    for a in sorted(stepping):
        out["pgd_step"][a] = pgd_step_seconds(target, kinds[a], config, select(a).slice(
            0, batch), eps_max)
    for a in sorted(measured):
        out["measure"][a] = measure_seconds(target, kinds[a], config, select(a).slice(
            0, batch), eps_max, index)
    for a in sorted({a for _, a, _ in work.query}):
        eps = max(float(e) for _, b, e in work.query if b == a)
        out["per_query"][a], out["query_measure"][a] = query_seconds(
            target, kinds[a], config, select(a).slice(0, batch), eps, oracle())
    if work.retrieval:
        out["retrieval"] = retrieval_seconds(target, config)
    for a in sorted({a for _, a, _ in work.catalog} if link is not None else ()):
        out["catalog_round"][a] = link.round_seconds(
            target.gallery.images(select(a).anchors[:1])[0].cpu(), config.size(kinds[a]))
    if moved and source is not None:
        probe_seconds(source, batch)
        for a in sorted(moved):
            out["source_step"][a] = pgd_step_seconds(source, kinds[a], config,
                                                     select(a).slice(0, batch), eps_max)
    out["seconds"] = time.perf_counter() - start
    return out


def plan_cells(target: Target, kinds: dict[str, AttackKind], config: AuditConfig, t: int,
               select: Callable[[str], Selection], work: Work, index=None,
               source: Target | None = None, oracle: Callable[[], Any] | None = None,
               probes: dict[str, Any] | None = None, link=None
               ) -> tuple[list[CellPlan], dict[str, Any]]:
    """The cells left, each priced from its probes; returns ``(cells, probes)``.
    ``select(attack)``: the attack's selection (the cells'); ``oracle()``: a new oracle like
    the one the query-only cells use (for the probe). ``probes``: reuse these (made for
    another T: a batch of another size costs :func:`batch_share` of theirs). ``link``: the
    catalog's service (:class:`~advrank.experiments.audit.catalog.CatalogLink`)."""
    batch = min(config.batch_size, t)
    if probes is None:
        probes = _probes(target, kinds, config, t, select, work, index, source, oracle, link)
    share = batch_share(batch, probes["batch"])
    batches = batches_of(t, batch)
    step = {a: s * share for a, s in probes["pgd_step"].items()}
    measure = {a: s * share for a, s in probes["measure"].items()}
    cells, clean_done = [], set()
    if work.retrieval:
        cells.append(CellPlan("retrieval", "retrieval", 0, probes.get("retrieval", 0.0)))
    for key, a, e in work.white_box:
        eta = config.threat(e, kinds[a]).eta if float(e) > 0 else 0
        seconds = white_box_cost(step.get(a, 0.0), measure[a], eta, batches)
        if a not in clean_done:  # the clean figures of a column, once per run
            clean_done.add(a)
            seconds += batches * measure[a]
        cells.append(CellPlan(key, "white-box", t, seconds))
    for key, a, _ in work.query:
        cells.append(CellPlan(key, "query-only", t, query_cost(
            probes["per_query"][a], t, config.query_budget or 0,
            probes["query_measure"][a] * share, batches, len(config.query_marks))))
    for key, a, e in work.transfer:
        eta = config.threat(e, kinds[a]).eta
        cells.append(CellPlan(key, "transfer", t, batches * (
            eta * probes["source_step"].get(a, 0.0) * share + 2 * measure[a])))
    cells += catalog_plans(work.catalog, kinds, config, t, step, measure,
                           probes.get("catalog_round", {}))
    eps_max = max(float(e) for e in config.eps_values)
    if work.panels:  # each kind's pool at the largest eps (no steps at eps 0)
        pool = min(EXAMPLE_POOL, t)
        cells.append(CellPlan("panels", "panels", pool * len(kinds), sum(
            panel_cost(step.get(a, 0.0), pool, batch, config.threat(eps_max, kind).eta)
            for a, kind in kinds.items()) if eps_max > 0 else 0.0))
    return cells, probes


def catalog_plans(keys: list[tuple[str, str, float]], kinds: dict[str, AttackKind],
                  config: AuditConfig, t: int, step: dict[str, float],
                  measure: dict[str, float], rounds: dict[str, float]) -> list[CellPlan]:
    """The catalog cells left, ``(key, attack, eps)`` each: an upload cell costs a white-box
    cell's steps and two measurements (the lab's figures and those of the upload as the
    service sees it) plus T rounds (upload, w searches, deletion); a query cell T attacks
    of min(uploads, searches / w) rounds each."""
    batches = batches_of(t, min(config.batch_size, t))
    out = []
    for key, a, e in keys:
        w = config.size(kinds[a])
        if key.startswith("catalog|"):
            eta = config.threat(e, kinds[a]).eta
            seconds = white_box_cost(step.get(a, 0.0), 2 * measure.get(a, 0.0), eta, batches)
            seconds += t * rounds.get(a, 0.0)
        else:
            per_attack = max(1, min(config.upload_budget, (config.query_budget or 0) // w))
            seconds = t * per_attack * rounds.get(a, 0.0)
        out.append(CellPlan(key, key.partition("|")[0], t, seconds))
    return out


def text_cells(keys: list[tuple[str, str, float]], kinds: dict[str, AttackKind],
               config: AuditConfig, t: int, probes: dict[str, Any]) -> list[CellPlan]:
    """The text section's cells left, ``(key, attack, eps)`` each, priced as the picture
    cells of the same kind and eps (the same PGD on the candidates; the queries are texts'
    embeddings, computed once); 0 where no probe of the kind ran."""
    batch = min(config.batch_size, t)
    share, batches = batch_share(batch, probes["batch"]), batches_of(t, batch)
    out = []
    for key, a, e in keys:
        eta = config.threat(e, kinds[a]).eta if float(e) > 0 else 0
        out.append(CellPlan(key, "text", t, white_box_cost(
            probes["pgd_step"].get(a, 0.0) * share, probes["measure"].get(a, 0.0) * share,
            eta, batches)))
    return out
