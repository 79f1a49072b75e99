"""``advrank audit``: one model on one collection, everything a reviewer needs in one folder.

Measures retrieval quality (Recall@K, mAP), runs every attack kind (CA+, CA-, QA+, QA- and the
embedding shift ES by default) at a few eps in model-input pixel units, and writes

* ``report.json`` (through the store: resumable, locked, one cell per finished measurement,
  so an interrupted audit continues where it stopped): every figure plus the command, seed,
  commit, hardware and the model/data fingerprints;
* ``report.html`` (:mod:`advrank.reports.html`): one self-contained page with the tables,
  the rank-vs-eps plots and Fig. 1-style example panels (recomputed from the seed each time:
  the adversarial examples are not stored, only their figures).

With an upload pipeline, an index, a transfer source or a query budget, the report adds the
*deployed view* (:func:`deployed_view`): at the same eps and on the same attacked items, the
white-box ranks beside the ranks after the upload pipeline, exact search beside the index,
the source model's white-box attacks ranked by the audited one (transfer), and query-only
attacks through the local oracle (the search's answers alone), with their rank at 10%, 25%,
50% and 100% of the budget (``rank_vs_queries.png``). Transfer and query-only cells are keyed
by their settings (the source's fingerprint; the budget, feedback and optimiser), so adding
them to a finished audit resumes it and runs only them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from advrank.attacks.base import AttackKind, make_kinds
from advrank.attacks.query import get_optimizer
from advrank.attacks.query.budget import check_budget
from advrank.attacks.selection import num_attacks_for
from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import check_number, format_eps
from advrank.core.metrics import query_metrics
from advrank.core.runtime import progress_bar
from advrank.errors import AdvrankError
from advrank.experiments.protocol import (
    ColumnSelections,
    attack_batches,
    cell_key,
    check_attack_cell,
    check_batch_size,
    run_attack,
    selection_seed,
)
from advrank.experiments.runner import Cell, Experiment, progress_log, run
from advrank.experiments.store import Store, figures_problem
from advrank.experiments.target import Target
from advrank.experiments.verdict import audit_verdict
from advrank.oracles import parse_feedback

AUDIT_FORMAT = "advrank-audit"
REPORT_JSON, REPORT_HTML = "report.json", "report.html"
#: the deployed view's rank-vs-queries plot (written when the query-only rows are on)
QUERY_PLOT = "rank_vs_queries.png"
#: the shares of the query budget at which the query-only attacks' best-so-far is measured
QUERY_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
#: eps for natural images, in [0, 1] pixel units of the model's input
DEFAULT_AUDIT_EPS = (2 / 255, 4 / 255, 8 / 255, 16 / 255)
AUDIT_ATTACKS = ("CA+", "CA-", "QA+", "QA-", "ES")
RECALL_KS = (1, 2, 4, 8)
#: identity values of audits written before the setting existed
IMPLIED_IDENTITY = {"index": None, "pipeline": None, "through_pipeline": False}


@dataclass
class AuditConfig:
    """What an audit runs. ``num_attacks`` None: min(1000, |X|) per (attack, eps) cell (the
    one default rule of :func:`~advrank.attacks.selection.num_attacks_for`);
    ``steps``/``step_size`` None: the paper's eta/alpha for each eps; ``examples``: panels per
    attack (at the largest eps) showing the ``top`` results before and after;
    ``max_queries``: retrieval is measured with at most this many queries (a seeded sample
    of X, each left out of its own list) unless the collection has a query split;
    ``pipeline`` (``png``, ``jpeg:75``): the upload pipeline the adversarial images are also
    measured after (figures ``*_pipeline``), attacked through when ``through_pipeline``;
    ``query_budget`` (None: off): queries per attack of the query-only rows (the kinds with a
    query-only form, at every eps > 0, on the white-box cells' selections) through the local
    oracle at ``feedback`` (``full``, ``topk:K``, ``topk-scores:K``; None: full), optimised by
    ``optimizer``."""

    eps_values: Sequence[float] = DEFAULT_AUDIT_EPS
    attacks: Sequence[str] = AUDIT_ATTACKS
    k: int = 1
    num_attacks: int | None = None
    seed: int = 0
    batch_size: int = 256
    steps: int | None = None
    step_size: float | None = None
    examples: int = 1
    top: int = 5
    max_queries: int = 5000
    options: dict[str, Any] = field(default_factory=dict)
    pipeline: str | None = None
    through_pipeline: bool = False
    query_budget: int | None = None
    feedback: str | None = None
    optimizer: str = "random"

    def validate(self, gallery_size: int | None = None) -> dict[str, AttackKind]:
        """Check every setting (before any work); returns the attack kinds."""
        if not self.eps_values:
            raise AdvrankError("give at least one eps value")
        for eps in self.eps_values:  # range checks, one line
            LinfThreatModel(float(eps), self.step_size, self.steps, pipeline=self.pipeline,
                            through_pipeline=self.through_pipeline)
        check_number(self.k, "k (w/m)", low=1, integer=True)
        check_number(self.examples, "examples per attack", low=0, high=20, integer=True)
        check_number(self.top, "results shown per list", low=1, high=50, integer=True)
        check_number(self.max_queries, "max queries", low=1, integer=True)
        check_batch_size(self.batch_size)
        if self.num_attacks is not None:
            check_number(self.num_attacks, "number of attacks", low=1, integer=True)
        kinds = make_kinds(list(self.attacks), self.options)
        for kind in kinds.values():
            if not kind.ranked:
                raise AdvrankError(f"an audit reports normalized ranks; {kind.name} has none "
                                   "(use advrank attack or advrank robustness for it)")
        self.check_query(kinds)
        return kinds

    def check_query(self, kinds: dict[str, AttackKind]) -> None:
        """The query-only settings: a budget, a feedback level and an optimiser, and at least
        one attack kind with a query-only form; feedback without a budget is refused."""
        if self.query_budget is None:
            if self.feedback is not None:
                raise AdvrankError("feedback applies to the query-only rows: give a query "
                                   "budget too (--query-budget B)")
            return
        check_budget(self.query_budget)
        parse_feedback(self.feedback or "full")
        get_optimizer(self.optimizer)
        if not any(kind.query_only for kind in kinds.values()):
            raise AdvrankError(f"the query-only rows need an attack with a query-only form "
                               f"(QA+, QA-, ES) among {', '.join(kinds)}")

    @property
    def query_marks(self) -> list[int]:
        """The query counts at which the rank-vs-queries curve is measured."""
        b = self.query_budget or 0
        return sorted({max(1, math.ceil(f * b)) for f in QUERY_FRACTIONS}) if b else []

    def query_key(self, attack: str, eps: float, k: int) -> str:
        """The store key of a query-only cell: the white-box cell's, prefixed, with the budget,
        feedback and optimiser (so turning the rows on resumes a finished audit)."""
        return (f"query|{cell_key(attack, eps, k)}|{self.query_budget}|"
                f"{parse_feedback(self.feedback or 'full').describe()}|"
                f"{get_optimizer(self.optimizer).name}")

    def attacks_for(self, n: int, note: Callable[[str], None] | None = None) -> int:
        """T per cell: as asked (at most |X|), or min(1000, |X|) (``note`` told when |X| caps
        it)."""
        return num_attacks_for(self.num_attacks, n, note)

    def check_gallery(self, n: int) -> None:
        """Refuse T or k that do not fit a collection of ``n`` members (before it is
        embedded: ``load_target``'s ``check``)."""
        if self.attacks_for(n) > n:
            raise AdvrankError(f"{self.attacks_for(n)} attacks requested but the gallery has "
                               f"only {n} items")
        if self.k >= n:
            raise AdvrankError(f"k = {self.k} needs a gallery of more than {self.k} items; it "
                               f"has {n}")


def check_cell(key: str, cell) -> str | None:
    """Why a stored audit cell cannot be reused (None if it can): the retrieval figures as
    percentages, or an attack summary with finite figures in their range."""
    if key == "retrieval":
        if not isinstance(cell, dict):
            return f"a {type(cell).__name__}, not a mapping"
        for name in ("map", *(f"recall@{k}" for k in RECALL_KS)):
            value = cell.get(name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                    not 0.0 <= value <= 100.0:
                return f"{name} is {repr(value)[:40]}, not a percentage"
        if not isinstance(cell.get("gallery_size"), int) or not isinstance(cell.get("queries"),
                                                                          int):
            return "no gallery size or query count"
        return None
    kind = key.partition("|")[0]
    # the same cells as a grid's, under the same keys (query-only and transfer ones prefixed)
    problem = check_query_cell(key, cell) if kind == "query" else \
        check_transfer_cell(key, cell) if kind == "transfer" else check_attack_cell(key, cell)
    if problem:
        return problem
    t, seconds = cell.get("num_attacks"), cell.get("seconds")
    if not isinstance(t, int) or isinstance(t, bool) or t < 1 or \
            not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
        return "no attack count or time"
    return None


def _attack_part_of(key: str, cell, fields: int, what: str) -> tuple[list[str], str | None]:
    """``(the key's fields, why not)``: a deployed cell's key has ``fields`` fields, its
    fields 1-3 (attack, eps, k) those of the attack summary it holds."""
    parts = key.split("|")
    if len(parts) != fields:
        return parts, f"not a {what} cell's key"
    return parts, check_attack_cell("|".join(parts[1:4]), cell)


def check_query_cell(key: str, cell) -> str | None:
    """Why a stored query-only cell cannot be reused (None if it can): an attack summary
    whose budget, feedback and optimiser match its key, no attack past its budget, and its
    rank-vs-queries checkpoints within their range."""
    parts, problem = _attack_part_of(key, cell, 7, "query-only")
    if problem:
        return problem
    budget, used = cell.get("query_budget"), cell.get("queries_used_max")
    if [str(budget), cell.get("feedback"), cell.get("optimizer")] != parts[4:]:
        return "its budget, feedback and optimizer do not match its key"
    if not isinstance(used, int) or isinstance(used, bool) or not 0 <= used <= budget:
        return f"{repr(used)[:40]} queries used, budget {budget}"
    points = cell.get("checkpoints")
    if not isinstance(points, list) or not points:
        return "no rank-vs-queries checkpoints"
    for point in points:
        problem = figures_problem(point, ("rank_after", "rank_after_se"))
        q = point.get("queries") if isinstance(point, dict) else None
        if problem or not isinstance(q, int) or isinstance(q, bool) or not 1 <= q <= budget:
            return f"a checkpoint: {problem or f'{q!r} queries'}"
    return None


def check_transfer_cell(key: str, cell) -> str | None:
    """Why a stored transfer cell cannot be reused (None if it can): an attack summary made
    on the source its key names, with the source's own figures in range."""
    parts, problem = _attack_part_of(key, cell, 5, "transfer")
    if problem:
        return problem
    if cell.get("source_model") != parts[4]:
        return "its source model does not match its key"
    problem = figures_problem(cell.get("source"), ("rank_before", "rank_after",
                                                   "rank_after_se"))
    return f"the source's figures: {problem}" if problem else None


def retrieval_figures(target: Target, max_queries: int, seed: int) -> dict[str, Any]:
    """Recall@1/2/4/8 and mAP (%): the query split against the gallery, or members of X as
    queries left out of their own lists (a seeded sample of ``max_queries`` when X is larger)."""
    g = target.gallery
    n = len(g)
    if target.queries is not None:
        q_emb, q_labels = target.queries
        own, mode = None, "query split vs gallery"
    else:
        idx = torch.arange(n)
        if n > max_queries:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_queries]
            idx = idx.sort().values
        dev = g.embeddings.device
        q_emb, q_labels, own = g.embeddings[idx.to(dev)], g.labels[idx.to(dev)], idx
        mode = "each member of X vs the rest" + (" (a seeded sample)" if n > max_queries else "")
    figures = query_metrics(q_emb, q_labels, g.embeddings, g.labels, g.distance, RECALL_KS, own)
    return {**figures, "queries": int(q_labels.numel()), "query_mode": mode,
            "gallery_size": n, "classes": int(g.labels.unique().numel())}


def _k(kind: AttackKind, config: AuditConfig) -> int:
    """The size an attack runs at: ``config.k`` (w or m), or 1 for a kind without one (ES)."""
    return kind.sizes([config.k])[0]


def _threat(config: AuditConfig, eps: float, kind: AttackKind) -> LinfThreatModel:
    return LinfThreatModel(float(eps), config.step_size, config.steps, kind.random_start,
                           pipeline=config.pipeline, through_pipeline=config.through_pipeline)


class Audit(Experiment):
    """The audit's declaration: a retrieval cell, then one cell per (attack, eps); see
    :func:`run_audit`."""

    name, filename, format, implied = "audit", REPORT_JSON, AUDIT_FORMAT, IMPLIED_IDENTITY
    outputs = (REPORT_HTML, QUERY_PLOT)

    def __init__(self, target: Target, config: AuditConfig, record: dict[str, Any] | None,
                 progress: bool = False, log: Callable[[str], None] | None = None,
                 index=None, source: Target | None = None):
        self.kinds = config.validate()
        self.source = check_source(source, target)
        self.log = log or (lambda m: None)
        self.t = config.attacks_for(len(target.gallery), lambda m: self.log(f"audit: note: {m}"))
        self.target, self.config, self.extra_record = target, config, record or {}
        self.progress, self.index, self.bar, self.oracle = progress, index, None, None
        self.columns = ColumnSelections(target.gallery, self.t, config.seed)

    def identity(self) -> dict[str, Any]:
        target, config = self.target, self.config
        return {"fingerprint": target.fingerprint, **fingerprints_of(target),
                "metric": target.meta.get("metric"), "gallery_size": len(target.gallery),
                "num_attacks": self.t, "seed": config.seed, "k": config.k,
                "steps": config.steps, "step_size": config.step_size,
                "options": {a: kind.options for a, kind in self.kinds.items()},
                "index": None if self.index is None else self.index.spec,
                **_upload_identity(config)}

    def check_cell(self, key: str, cell) -> str | None:
        return check_cell(key, cell)

    def record(self) -> dict[str, Any]:
        settings = {k: v for k, v in asdict(self.config).items() if k != "options"}
        return {**self.extra_record, "audit": settings}

    def cells(self, store: Store) -> list[Cell]:
        config = self.config
        return [Cell("retrieval", lambda: retrieval_figures(self.target, config.max_queries,
                                                             config.seed)),
                *(Cell(cell_key(a, e, _k(self.kinds[a], config)),
                       lambda a=a, e=e: self.cell(a, e))
                  for a in self.kinds for e in config.eps_values),
                *(Cell(key, lambda a=a, e=e: self.query_cell(a, e))
                  for a, e, key in query_cells(self.kinds, config)),
                *(Cell(key, lambda a=a, e=e: self.transfer_cell(a, e))
                  for a, e, key in transfer_cells(self.kinds, config, self.source))]

    def announce(self, todo: int, done: int) -> str:
        return (f"audit: {todo} cells to run ({done} already done), T = {self.t}, "
                f"|X| = {len(self.target.gallery)}")

    @contextlib.contextmanager
    def running(self, store: Store):
        """The estimate before the first attack, then one progress bar over every cell's
        attacks and the example panels."""
        todo = [(a, e) for a in self.kinds for e in self.config.eps_values
                if cell_key(a, e, _k(self.kinds[a], self.config)) not in store]
        query_todo = [(a, e) for a, e, key in query_cells(self.kinds, self.config)
                      if key not in store]
        todo += [(a, e) for a, e, key in transfer_cells(self.kinds, self.config, self.source)
                 if key not in store]  # PGD on the source: timed on the audited model
        plan = audit_plan(self.target, self.kinds, self.config, self.t, todo, query_todo)
        self.log(estimate_message(plan))
        with progress_bar(total=plan["attacks"], desc="audit", unit="attack",
                          enabled=self.progress) as self.bar:
            yield
        self.bar = None

    def cell(self, attack: str, eps: float) -> dict[str, Any]:
        kind, config = self.kinds[attack], self.config
        k = _k(kind, config)
        selection, clean_cache = self.columns(attack, kind, k)
        return run_attack(self.target.model, self.target.gallery, kind, float(eps), k, self.t,
                          seed=config.seed, batch_size=config.batch_size,
                          threat=_threat(config, eps, kind), selection=selection,
                          progress=False, clean_cache=clean_cache, bar=self.bar,
                          index=self.index).summary()

    def query_cell(self, attack: str, eps: float) -> dict[str, Any]:
        """The query-only attacks of one (attack, eps): the white-box cell's selection, through
        the local oracle (exact search over the audited gallery), measured exactly, with the
        best-so-far rank at each of the config's query marks."""
        from advrank.experiments.query import run_query_attack
        from advrank.oracles import make_oracle

        kind, config = self.kinds[attack], self.config
        if self.oracle is None:
            self.oracle = make_oracle("local", self.target, config.feedback or "full")
        k = _k(kind, config)
        selection, _ = self.columns(attack, kind, k)
        result = run_query_attack(self.target, kind, self.oracle, config.optimizer, float(eps),
                                  k, self.t, config.query_budget, seed=config.seed,
                                  batch_size=config.batch_size, selection=selection,
                                  progress=False, checkpoints=config.query_marks)
        if self.bar is not None:
            self.bar.update(len(selection))
        summary = result.summary()
        summary["checkpoints"] = [  # the rank-vs-queries points the report draws
            {"queries": c, **{key: v for key, v in figures.items()
                              if key.endswith(("_after", "_after_se")) or key == "queries_used"}}
            for c, figures in result.extra["checkpoints"].items()]
        return summary

    def transfer_cell(self, attack: str, eps: float) -> dict[str, Any]:
        """The white-box attacks of one (attack, eps) made on the source model and ranked by
        the audited one: the white-box cell's selection (the same attacked items), the
        source's own white-box figures under ``source``."""
        from advrank.experiments.transfer import transfer_pass

        kind, config, src = self.kinds[attack], self.config, self.source
        k = _k(kind, config)
        selection, _ = self.columns(attack, kind, k)
        own, (ranked,) = transfer_pass((src.model, src.gallery),
                                       [(self.target.model, self.target.gallery)], kind,
                                       kind.threat_for(_threat(config, eps, kind)), selection,
                                       config.seed, config.batch_size, False)
        if self.bar is not None:
            self.bar.update(len(selection))
        keys = ("rank_before", "rank_after", "rank_after_se")
        return {**ranked.summary(), "source_model": src.fingerprint,
                "source": {key: own.summary()[key] for key in keys}}

    def finished(self, store: Store, cell: Cell, value: Any, seconds: float, log) -> None:
        if cell.key != "retrieval":
            how = {"query": f" query-only ({value.get('queries_used', 0):.0f} queries)",
                   "transfer": " transfer"}.get(cell.key.partition("|")[0], "")
            with self.bar.external_write_mode():  # a line above the bar, not through it
                log(f"  {value['attack']} eps={format_eps(value['eps'])}{how}: rank "
                    f"{value['rank_before']:.1f} -> {value['rank_after']:.1f}% "
                    f"({value['seconds']:.0f}s)")

    def publish(self, store: Store, computed: list[str]) -> dict[str, Any]:
        from advrank.reports.html import audit_html

        panels = example_panels(self.target, self.kinds, self.config, self.t, self.bar)
        summary = audit_summary(store, self.kinds, self.config, self.target)
        examples = [p["figures"] for p in panels]
        summary["verdict"] = audit_verdict(summary["attacks"], examples)
        summary["deployed"] = deployed_view(store, self.kinds, self.config, self.index,
                                            self.source)
        plot = None
        if summary["deployed"] and any(r["view"] == "query-only"
                                       for r in summary["deployed"]["rows"]):
            from advrank.reports.plots import rank_queries_png

            plot = rank_queries_png(summary["deployed"]["rows"])
            store.write_bytes(QUERY_PLOT, plot)
        store.extra = {"summary": summary, "examples": examples}
        store.flush()
        store.write_text(REPORT_HTML, audit_html(store.content(), panels, plot))
        return summary


def run_audit(target: Target, out_dir: str | Path, config: AuditConfig | None = None,
              record: dict[str, Any] | None = None, progress: bool = False,
              log: Callable[[str], None] | None = None, index=None, force: bool = False,
              source: Target | None = None) -> dict[str, Any]:
    """Run (or resume) the audit into ``out_dir``; returns the summary that ``--json``
    prints (``recall@1``, ``map``, ``gallery_size``, ``attacks``: one row per cell,
    ``deployed``: :func:`deployed_view`...).
    ``index``: a :class:`~advrank.core.index.VectorIndex` over the gallery whose ranks are
    measured beside the exact ones (``*_index``), part of the audit's identity. ``source``:
    another model on the same collection whose white-box attacks are ranked by the audited
    one (the deployed view's transfer rows). ``force``: overwrite a report.html that is not
    this run's and start over."""
    log = log or progress_log(progress)
    audit = Audit(target, config or AuditConfig(), record, progress, log, index, source)
    audit.force = force
    summary = run(audit, out_dir, log)
    return {**summary, "out": str(out_dir), "report_html": str(Path(out_dir) / REPORT_HTML),
            "report_json": str(Path(out_dir) / REPORT_JSON)}


#: an audit estimated beyond this many seconds is announced with a warning and the fast setting
LONG_AUDIT_SECONDS = 30 * 60
#: the documented quick look: one eps, fewer attacks
FAST_SETTING = "--eps 8/255 --num-attacks 100"


def probe_seconds(target: Target, batch: int, backward: bool = True) -> float:
    """Wall-clock seconds of one forward and backward pass of the model on ``batch`` members
    of X: what one PGD step of one batch costs (the ranking objective is small beside it);
    ``backward=False``: the forward pass alone, what one round of query-only attacks costs.
    A batch that does not fit the memory is probed in halves (as the attacks run it) and the
    time scaled back up."""
    import time

    g = target.gallery
    size = min(batch, len(g))
    while True:
        images = g.images(torch.arange(size)).requires_grad_(backward)
        try:
            _sync(g.device)
            start = time.perf_counter()
            with torch.set_grad_enabled(backward):  # the input's gradient, as PGD takes it
                out = target.model(images)
                if backward:
                    torch.autograd.grad(out.sum(), images)
            _sync(g.device)
            return (time.perf_counter() - start) * min(batch, len(g)) / size
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            del images
            if g.device.type == "cuda":
                torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def audit_plan(target: Target, kinds: dict[str, AttackKind], config: AuditConfig, t: int,
               todo: Sequence[tuple[str, float]],
               query_todo: Sequence[tuple[str, float]] = ()) -> dict[str, Any]:
    """The work left and its estimated time: a timed probe (one forward+backward of a batch)
    times the PGD steps of each cell times its batches, plus the example panels' attacks,
    plus the query-only cells left (``query_todo``): one forward pass of a batch (probed
    too) per query of each batch's attacks. Nothing is probed when no attack is left. Returns
    ``attacks`` (for one progress bar), ``steps`` (batch-steps), ``probe_seconds``,
    ``query_rounds`` (batch-forwards), ``forward_seconds``, ``seconds`` (the estimate)."""
    batch = min(config.batch_size, t)
    batches = -(-t // batch)
    steps = sum(_threat(config, e, kinds[a]).eta * batches for a, e in todo if float(e) > 0)
    attacks = len(todo) * t
    if config.examples:  # the panels re-run a pool of each kind's attacks at the largest eps
        pool = min(EXAMPLE_POOL, t)
        eps = max(float(e) for e in config.eps_values)
        attacks += len(kinds) * pool
        steps += sum(_threat(config, eps, kind).eta * -(-pool // batch) for kind in
                     kinds.values()) if eps > 0 else 0
    probe = probe_seconds(target, batch) if steps else 0.0
    rounds = len(query_todo) * batches * (config.query_budget or 0)
    forward = probe_seconds(target, batch, backward=False) if rounds else 0.0
    seconds = probe * steps + forward * rounds
    return {"attacks": attacks + len(query_todo) * t, "steps": steps, "batch": batch,
            "probe_seconds": probe, "query_rounds": rounds, "forward_seconds": forward,
            "seconds": seconds, "long": seconds > LONG_AUDIT_SECONDS}


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def estimate_message(plan: dict[str, Any]) -> str:
    """The line an audit prints before its attacks start (and a warning when long)."""
    rounds = plan.get("query_rounds", 0)
    if not plan["steps"] and not rounds:
        return "audit: no attack left to run"
    parts = []
    if plan["steps"]:
        parts.append(f"{plan['steps']} PGD steps of {plan['batch']}-image batches, one took "
                     f"{plan['probe_seconds']:.2f} s")
    if rounds:
        parts.append(f"{rounds} query-only rounds of {plan['batch']} queries, one forward "
                     f"pass took {plan['forward_seconds']:.2f} s")
    text = (f"audit: estimated time about {format_duration(plan['seconds'])} "
            f"({'; '.join(parts)})")
    if plan["long"]:
        text += (f"\naudit: warning: this is a long run; for a quick look use "
                 f"{FAST_SETTING} (Ctrl-C stops it; rerunning resumes)")
    return text


def _upload_identity(config: AuditConfig) -> dict[str, Any]:
    """The pipeline settings as the audit's identity records them (None: the float pixels)."""
    pipeline = LinfThreatModel(0.0, pipeline=config.pipeline).pipeline
    return {"pipeline": None if pipeline is None else pipeline.spec,
            "through_pipeline": config.through_pipeline}


def fingerprints_of(target: Target) -> dict[str, str]:
    """SHA-256 of the model's weights and of the collection (computed if loading did not)."""
    from advrank.models.weights import state_fingerprint

    return {"model_sha": target.info.get("model_sha") or state_fingerprint(target.model),
            "data_sha": target.info.get("data_sha") or target.dataset.fingerprint()}


def audit_summary(st: Store, kinds: dict[str, AttackKind], config: AuditConfig,
                  target: Target) -> dict[str, Any]:
    """The figures a reader wants first: retrieval, and one row per (attack, eps) cell."""
    retrieval = st.get("retrieval")
    rows = []
    for attack in kinds:
        for eps in config.eps_values:
            k = _k(kinds[attack], config)
            cell = st.get(cell_key(attack, eps, k))
            rows.append({"attack": attack, "eps": float(eps), "k": k,
                         "direction": kinds[attack].direction,
                         **{key: cell[key] for key in cell if key.endswith(("_before",
                            "_after", "_se", "_max"))}, "num_attacks": cell["num_attacks"],
                         "seconds": cell["seconds"]})
    return {"recall@1": retrieval["recall@1"], "map": retrieval["map"],
            "gallery_size": retrieval["gallery_size"], "retrieval": retrieval,
            "unreadable_images": target.info.get("unreadable_images", 0),
            "unreadable": target.info.get("unreadable", []), "attacks": rows}


def query_cells(kinds: dict[str, AttackKind], config: AuditConfig
                ) -> list[tuple[str, float, str]]:
    """``(attack, eps, key)`` of each query-only cell: the kinds with a query-only form at
    every eps > 0 (none without a query budget)."""
    if config.query_budget is None:
        return []
    return [(a, e, config.query_key(a, e, _k(kind, config))) for a, kind in kinds.items()
            if kind.query_only for e in config.eps_values if float(e) > 0]


def check_source(source: Target | None, target: Target) -> Target | None:
    """The transfer source, refused unless it embeds the audited collection (same pictures,
    same order: the selections index both galleries)."""
    if source is None:
        return None
    if len(source.gallery) != len(target.gallery) or \
            fingerprints_of(source)["data_sha"] != fingerprints_of(target)["data_sha"]:
        raise AdvrankError(f"the transfer source {source.source} embeds another collection "
                           f"({len(source.gallery)} items) than the audited model "
                           f"({len(target.gallery)}); transfer needs one shared collection")
    return source


def transfer_cells(kinds: dict[str, AttackKind], config: AuditConfig,
                   source: Target | None) -> list[tuple[str, float, str]]:
    """``(attack, eps, key)`` of each transfer cell: every kind at every eps > 0, keyed by
    the source's fingerprint (none without a source)."""
    if source is None:
        return []
    return [(a, e, f"transfer|{cell_key(a, e, _k(kind, config))}|{source.fingerprint}")
            for a, kind in kinds.items() for e in config.eps_values if float(e) > 0]


#: the deployed view's rows from a white-box cell: (view, suffix of its figures); ranks (% of
#: |X|) first, then positions in the top results of exact search and of the index
RANK_VIEWS = (("white-box", ""), ("pipeline", "_pipeline"))
TOPK_VIEWS = (("exact", "_exact"), ("index", "_index"), ("exact-pipeline", "_exact_pipeline"),
              ("index-pipeline", "_index_pipeline"))


def _view_rows(cell: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one white-box cell: its figures under each view's suffix, renamed to the
    plain names (``rank_pipeline_after`` -> ``rank_after`` in the ``pipeline`` row)."""
    rows = []
    for views, figures in ((RANK_VIEWS, ("rank",)), (TOPK_VIEWS, ("rank_topk", "in_topk"))):
        for view, suffix in views:
            if f"{figures[0]}{suffix}_after" not in cell:
                continue
            row = {**base, "view": view}
            for fig in figures:
                for end in ("_before", "_after", "_after_se"):
                    row[fig + end] = cell[f"{fig}{suffix}{end}"]
            rows.append(row)
    return rows


def deployed_view(st: Store, kinds: dict[str, AttackKind], config: AuditConfig,
                  index=None, source: Target | None = None) -> dict[str, Any] | None:
    """What a deployed search would see, at the audit's eps and on the same attacked items
    (None when the audit asked for none of it): ``rows``, one per (attack, eps, view) with
    ``view`` one of ``white-box``, ``pipeline`` (the white-box images after the upload
    pipeline), ``query-only`` (through the local oracle; with ``checkpoints``, the rank at
    each query mark), ``transfer`` (made white-box on ``source``, ranked by the audited
    model; ``source``: the source's own figures), ``exact``/``index`` (and ``*-pipeline``:
    position ``rank_topk`` and share ``in_topk`` within the top ``index_depth`` results); and
    the settings behind them."""
    if config.query_budget is None and config.pipeline is None and index is None and \
            source is None:
        return None
    rows = []
    for attack, kind in kinds.items():
        k = _k(kind, config)
        for eps in config.eps_values:
            base = {"attack": attack, "eps": float(eps), "k": k, "direction": kind.direction}
            cell = st.get(cell_key(attack, eps, k))
            rows += _view_rows(cell, base)
            moved = st.get(f"transfer|{cell_key(attack, eps, k)}|{source.fingerprint}") \
                if source is not None else None
            if moved is not None:
                rows.append({**base, "view": "transfer", "source": moved["source"],
                             **{key: moved[key] for key in ("rank_before", "rank_after",
                                                            "rank_after_se")}})
            query = st.get(config.query_key(attack, eps, k)) if config.query_budget else None
            if query is not None:
                rows.append({**base, "view": "query-only",
                             **{key: query[key] for key in ("rank_before", "rank_after",
                                                            "rank_after_se", "queries_used",
                                                            "queries_used_max",
                                                            "checkpoints")}})
    settings = None if config.query_budget is None else {
        "budget": config.query_budget, "feedback": parse_feedback(config.feedback or "full")
        .describe(), "optimizer": get_optimizer(config.optimizer).name,
        "oracle": "local", "marks": config.query_marks, "plot": QUERY_PLOT}
    first = next((st.get(cell_key(a, e, _k(kinds[a], config))) for a in kinds
                  for e in config.eps_values), {})
    return {"query": settings, "pipeline": _upload_identity(config)["pipeline"],
            "through_pipeline": config.through_pipeline,
            "index": None if index is None else index.spec,
            "index_depth": first.get("index_depth"), "rows": rows,
            "transfer": None if source is None else {
                "source": source.source, "fingerprint": source.fingerprint,
                "model_sha": fingerprints_of(source)["model_sha"]}}


@torch.no_grad()
def _ranked(target: Target, view, top: int) -> tuple[list[int], dict[int, int]]:
    """The first ``top`` members of a view's ranking list and the 0-based rank of each
    highlighted member (members strictly closer than it, exclusions left out)."""
    g = target.gallery
    q = view.query_emb.to(g.device)[None]
    d = g.distance.pairwise(q, g.embeddings)[0].clone()
    if view.replace is not None:
        i, e = view.replace
        d[i] = g.distance.paired(q[0], e.to(g.device))
    if view.exclude:
        d[torch.tensor(view.exclude, device=g.device)] = float("inf")
    order = d.argsort()
    ranks = {h: int((d < d[h]).sum()) for h in view.highlight}
    return order[:top].tolist(), ranks


#: the first attacks of a kind's selection among which the example panels are picked
EXAMPLE_POOL = 32


def example_panels(target: Target, kinds: dict[str, AttackKind], config: AuditConfig,
                   t: int, bar=None) -> list[dict[str, Any]]:
    """Fig. 1-style examples at the largest eps: among the first ``EXAMPLE_POOL`` attacks of
    each kind's selection (re-run exactly as in the measured cell: same draw, same keyed
    random start), the ``examples`` whose rank moved furthest in the attack's direction, so
    the panels show what the attack can do rather than a random draw.
    Each panel: ``images`` (tensors for the page) and ``figures`` (what report.json keeps)."""
    if config.examples == 0:
        return []
    g, eps = target.gallery, max(float(e) for e in config.eps_values)
    panels = []
    for attack, kind in kinds.items():
        if type(kind).view is AttackKind.view:  # a plugin kind without example views
            continue
        k = _k(kind, config)
        selection = kind.select(g, k, t, selection_seed(config.seed, attack, k))
        pool = selection.slice(0, min(EXAMPLE_POOL, t))
        advs = torch.cat([adv for _, adv in attack_batches(
            target.model, g, kind, _threat(config, eps, kind), pool, config.seed,
            config.batch_size, bar=bar)])
        with torch.no_grad():
            after = target.model(advs)
        before = g.embeddings[pool.anchors.to(g.device)]
        chosen = _largest_moves(kind, kind.measure(g, pool, before)["rank"],
                                kind.measure(g, pool, after)["rank"], config.examples)
        part = pool.take(chosen)
        clean = g.images(part.anchors)
        for i, j in enumerate(chosen.tolist()):
            panels.append(_panel(target, kind, part.slice(i, i + 1), eps, clean[i], advs[j],
                                 before[j : j + 1], after[j : j + 1], config.top))
    return panels


def _largest_moves(kind: AttackKind, before: torch.Tensor, after: torch.Tensor,
                   n: int) -> torch.Tensor:
    """Indices of the ``n`` attacks (of ``before``/``after`` ranks ``[P]``) that moved their
    rank furthest in the kind's direction of success; ties keep the selection order."""
    move = (before - after) if kind.direction == "down" else (after - before)
    order = torch.sort(-move.float().cpu(), stable=True).indices
    return order[: min(n, move.numel())]


def _panel(target: Target, kind: AttackKind, part, eps: float, clean: torch.Tensor,
           adv: torch.Tensor, before: torch.Tensor, after: torch.Tensor, top: int) -> dict:
    g = target.gallery
    ds = g.dataset
    n = len(g)

    def item(i: int) -> dict[str, Any]:
        label = int(g.labels[i])
        return {"index": int(i), "name": ds.item_name(i), "label": ds.label_name(label)}

    lists, ranks = {}, {}
    for when, emb in (("before", before), ("after", after)):
        view = kind.view(g, part, emb)
        lists[when], ranks[when] = _ranked(target, view, top)
    anchor = int(part.anchors[0])
    m_before, m_after = kind.measure(g, part, before), kind.measure(g, part, after)
    figures = {
        "attack": kind.name, "eps": eps, "anchor": item(anchor),
        "query": None if view.query is None else item(view.query),
        "targets": [{**item(h), "rank_before": ranks["before"][h],
                     "rank_after": ranks["after"][h]} for h in view.highlight],
        "top_before": [{**item(i), "rank": r} for r, i in enumerate(lists["before"])],
        "top_after": [{**item(i), "rank": r} for r, i in enumerate(lists["after"])],
        "measure_before": {k: float(v[0]) for k, v in m_before.items()},
        "measure_after": {k: float(v[0]) for k, v in m_after.items()},
        "linf": float((adv - clean).abs().max()), "gallery_size": n,
        "description": kind.description, "direction": kind.direction,
    }
    idx = sorted({*lists["before"], *lists["after"], *view.highlight,
                  *([view.query] if view.query is not None else [])})
    thumbs = dict(zip(idx, g.images(torch.tensor(idx)).cpu(), strict=True))
    replaced = view.replace[0] if view.replace is not None else None
    return {"figures": figures, "images": {"clean": clean.cpu(), "adversarial": adv.cpu(),
                                           "thumbs": thumbs, "replaced": replaced}}
