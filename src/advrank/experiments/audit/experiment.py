"""The audit as an experiment (:class:`Audit`, :func:`run_audit`): its cells, what a
stored cell must hold, and its publication (summary, deployed view, panels, report.html)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

import advrank.experiments.audit.deployed as deployed
import advrank.experiments.audit.settings as settings
from advrank.attacks.base import AttackKind
from advrank.core.checks import format_eps
from advrank.core.metrics import query_metrics
from advrank.core.runtime import progress_bar
from advrank.experiments.audit.panels import example_panels
from advrank.experiments.audit.plan import audit_plan, estimate_message
from advrank.experiments.audit.settings import AuditConfig, fingerprints_of
from advrank.experiments.audit.text import (
    PREFIX,
    RETRIEVAL,
    TextSection,
    check_text_cell,
    is_text_key,
)
from advrank.experiments.protocol import ColumnSelections, run_attack
from advrank.experiments.results import cell_key, check_attack_cell
from advrank.experiments.runner import Cell, Experiment, progress_log, run
from advrank.experiments.store import Store
from advrank.experiments.target import Target
from advrank.experiments.verdict import audit_verdict
from advrank.oracles.base import Oracle


def check_cell(key: str, cell) -> str | None:
    """Why a stored audit cell cannot be reused (None if it can): the retrieval figures as
    percentages, or an attack summary with finite figures in their range."""
    if is_text_key(key):  # the text section's
        problem = check_text_cell(key, cell)
        if problem or key.startswith(RETRIEVAL):
            return problem
    elif key == "retrieval":
        if not isinstance(cell, dict):
            return f"a {type(cell).__name__}, not a mapping"
        for name in ("map", *(f"recall@{k}" for k in settings.RECALL_KS)):
            value = cell.get(name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                    not 0.0 <= value <= 100.0:
                return f"{name} is {repr(value)[:40]}, not a percentage"
        if not isinstance(cell.get("gallery_size"), int) or not isinstance(cell.get("queries"),
                                                                          int):
            return "no gallery size or query count"
        return None
    else:
        kind = key.partition("|")[0]
        # the same cells as a grid's, under the same keys (query-only and transfer ones
        # prefixed)
        problem = deployed.check_query_cell(key, cell) if kind == "query" else \
            deployed.check_transfer_cell(key, cell) if kind == "transfer" else \
            check_attack_cell(key, cell)
        if problem:
            return problem
    t, seconds = cell.get("num_attacks"), cell.get("seconds")
    if not isinstance(t, int) or isinstance(t, bool) or t < 1 or \
            not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
        return "no attack count or time"
    return None

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
    figures = query_metrics(q_emb, q_labels, g.embeddings, g.labels, g.distance,
                            settings.RECALL_KS, own)
    return {**figures, "queries": int(q_labels.numel()), "query_mode": mode,
            "gallery_size": n, "classes": int(g.labels.unique().numel())}

class Audit(Experiment):
    """The audit's declaration: a retrieval cell, then one cell per (attack, eps); see
    :func:`run_audit`."""

    name, filename, format = "audit", settings.REPORT_JSON, settings.AUDIT_FORMAT
    implied = settings.IMPLIED_IDENTITY
    outputs = (settings.REPORT_HTML, settings.QUERY_PLOT)

    def __init__(self, target: Target, config: AuditConfig, record: dict[str, Any] | None,
                 progress: bool = False, log: Callable[[str], None] | None = None,
                 index=None, source: Target | None = None):
        self.kinds = config.validate()
        self.source = deployed.check_source(source, target)
        self.log = log or (lambda m: None)
        self.t = config.attacks_for(len(target.gallery), lambda m: self.log(f"audit: note: {m}"))
        self.target, self.config, self.extra_record = target, config, record or {}
        self.progress, self.index = progress, index
        self.bar: Any = None  # the progress bar while the cells run
        self.oracle: Oracle | None = None  # the local oracle, made for the first query cell
        self.columns = ColumnSelections(target.gallery, self.t, config.seed)
        self.text = (None if config.queries is None else
                     TextSection(target, config, self.kinds, self.t, self.log))

    def identity(self) -> dict[str, Any]:
        target, config = self.target, self.config
        return {"fingerprint": target.fingerprint, **fingerprints_of(target),
                "metric": target.meta.metric, "gallery_size": len(target.gallery),
                "num_attacks": self.t, "seed": config.seed, "k": config.k,
                "steps": config.steps, "step_size": config.step_size,
                "options": {a: kind.options for a, kind in self.kinds.items()},
                "index": None if self.index is None else self.index.spec,
                **config.upload_identity()}

    def check_cell(self, key: str, cell) -> str | None:
        return check_cell(key, cell)

    def record(self) -> dict[str, Any]:
        settings = {k: v for k, v in asdict(self.config).items() if k != "options"}
        return {**self.extra_record, "audit": settings}

    def cells(self, store: Store) -> list[Cell]:
        config = self.config
        return [Cell("retrieval", partial(retrieval_figures, self.target, config.max_queries,
                                          config.seed)),
                *(Cell(cell_key(a, e, config.size(self.kinds[a])), partial(self.cell, a, e))
                  for a in self.kinds for e in config.eps_values),
                *(Cell(key, partial(self.query_cell, a, e))
                  for a, e, key in deployed.query_cells(self.kinds, config)),
                *(Cell(key, partial(self.transfer_cell, a, e))
                  for a, e, key in deployed.transfer_cells(self.kinds, config, self.source)),
                *([] if self.text is None else self.text.cells(lambda: self.bar))]

    def announce(self, todo: int, done: int) -> str:
        return (f"audit: {todo} cells to run ({done} already done), T = {self.t}, "
                f"|X| = {len(self.target.gallery)}")

    @contextlib.contextmanager
    def running(self, store: Store):
        """The estimate before the first attack, then one progress bar over every cell's
        attacks and the example panels."""
        todo = [(a, e) for a in self.kinds for e in self.config.eps_values
                if cell_key(a, e, self.config.size(self.kinds[a])) not in store]
        config = self.config
        query_todo = [(a, e) for a, e, key in deployed.query_cells(self.kinds, config)
                      if key not in store]
        todo += [(a, e) for a, e, key in deployed.transfer_cells(self.kinds, config, self.source)
                 if key not in store]  # PGD on the source: timed on the audited model
        kinds = dict(self.kinds)
        if self.text is not None:  # the text cells and panels, under their own names
            kinds.update({f"text {a}": kind for a, kind in self.text.kinds.items()})
            todo += [(f"text {a}", e) for a, e, key in self.text.keys() if key not in store]
        plan = audit_plan(self.target, kinds, self.config, self.t, todo, query_todo)
        self.log(estimate_message(plan))
        with progress_bar(total=plan["attacks"], desc="audit", unit="attack",
                          enabled=self.progress) as self.bar:
            yield
        self.bar = None

    def cell(self, attack: str, eps: float) -> dict[str, Any]:
        kind, config = self.kinds[attack], self.config
        k = config.size(kind)
        selection, clean_cache = self.columns(attack, kind, k)
        return run_attack(self.target.model, self.target.gallery, kind, float(eps), k, self.t,
                          seed=config.seed, batch_size=config.batch_size,
                          threat=config.threat(eps, kind), selection=selection,
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
        k = config.size(kind)
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
        k = config.size(kind)
        selection, _ = self.columns(attack, kind, k)
        own, (ranked,) = transfer_pass((src.model, src.gallery),
                                       [(self.target.model, self.target.gallery)], kind,
                                       kind.threat_for(config.threat(eps, kind)), selection,
                                       config.seed, config.batch_size, False)
        if self.bar is not None:
            self.bar.update(len(selection))
        keys = ("rank_before", "rank_after", "rank_after_se")
        return {**ranked.summary(), "source_model": src.fingerprint,
                "source": {key: own.summary()[key] for key in keys}}

    def finished(self, store: Store, cell: Cell, value: Any, seconds: float, log) -> None:
        if cell.key != "retrieval":
            how = {"query": f" query-only ({value.get('queries_used', 0):.0f} queries)",
                   "transfer": " transfer", PREFIX: " text queries",
                   RETRIEVAL: None}.get(cell.key.partition("|")[0], "")
            if how is None:
                return
            with self.bar.external_write_mode():  # a line above the bar, not through it
                log(f"  {value['attack']} eps={format_eps(value['eps'])}{how}: rank "
                    f"{value['rank_before']:.1f} -> {value['rank_after']:.1f}% "
                    f"({value['seconds']:.0f}s)")

    def publish(self, store: Store, computed: list[str]) -> dict[str, Any]:
        from advrank.reports.html import audit_html

        panels = example_panels(self.target, self.kinds, self.config, self.t, self.bar)
        summary = audit_summary(store, self.kinds, self.config, self.target)
        examples = [p["figures"] for p in panels]
        text_panels = [] if self.text is None else self.text.panels(self.bar)
        if self.text is not None:
            summary["text"] = {**self.text.summary(store),
                               "examples": [p["figures"] for p in text_panels]}
        summary["verdict"] = audit_verdict(summary["attacks"], examples)
        summary["deployed"] = deployed.deployed_view(store, self.kinds, self.config, self.index,
                                            self.source)
        plot = None
        if summary["deployed"] and any(r["view"] == "query-only"
                                       for r in summary["deployed"]["rows"]):
            from advrank.reports.plots import rank_queries_png

            plot = rank_queries_png(summary["deployed"]["rows"])
            store.write_bytes(settings.QUERY_PLOT, plot)
        store.extra = {"summary": summary, "examples": examples}
        store.flush()
        store.write_text(settings.REPORT_HTML, audit_html(store.content(), panels, plot,
                                                          text_panels))
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
    folder = Path(out_dir)
    return {**summary, "out": str(out_dir), "report_html": str(folder / settings.REPORT_HTML),
            "report_json": str(folder / settings.REPORT_JSON)}


def audit_summary(st: Store, kinds: dict[str, AttackKind], config: AuditConfig,
                  target: Target) -> dict[str, Any]:
    """The figures a reader wants first: retrieval, and one row per (attack, eps) cell."""
    retrieval = st.get("retrieval")
    rows = []
    for attack in kinds:
        for eps in config.eps_values:
            k = config.size(kinds[attack])
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
