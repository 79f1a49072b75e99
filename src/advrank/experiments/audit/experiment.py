"""The audit as an experiment (:class:`Audit`, :func:`run_audit`): its cells, what a
stored cell must hold, and its publication (summary, deployed view, panels, report.html)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import advrank.experiments.audit.catalog as catalog
import advrank.experiments.audit.deployed as deployed
import advrank.experiments.audit.settings as settings
from advrank.attacks.base import AttackKind
from advrank.core.checks import format_eps
from advrank.errors import AdvrankError
from advrank.experiments.audit.panels import example_panels
from advrank.experiments.audit.plan import Work, plan_cells, text_cells
from advrank.experiments.audit.retrieval import retrieval_figures
from advrank.experiments.audit.settings import AuditConfig, fingerprints_of
from advrank.experiments.audit.text import (
    PREFIX,
    RETRIEVAL,
    TextSection,
    check_text_cell,
    is_text_key,
)
from advrank.experiments.audit.timing import (
    EstimateBar,
    TimeModel,
    estimate_message,
    format_duration,
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
            catalog.check_catalog_cell(key, cell) if kind.startswith("catalog") else \
            check_attack_cell(key, cell)
        if problem:
            return problem
    t, seconds = cell.get("num_attacks"), cell.get("seconds")
    if not isinstance(t, int) or isinstance(t, bool) or t < 1 or \
            not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
        return "no attack count or time"
    return None

class Audit(Experiment):
    """The audit's declaration: a retrieval cell, then one cell per (attack, eps); see
    :func:`run_audit`."""

    name, filename, format = "audit", settings.REPORT_JSON, settings.AUDIT_FORMAT
    implied = settings.IMPLIED_IDENTITY
    outputs = (settings.REPORT_HTML, settings.QUERY_PLOT)

    def __init__(self, target: Target, config: AuditConfig, record: dict[str, Any] | None,
                 progress: bool = False, log: Callable[[str], None] | None = None,
                 index=None, source: Target | None = None, probes: dict | None = None,
                 link: catalog.CatalogLink | None = None):
        self.kinds, self.link = config.validate(), link
        self.source = deployed.check_source(source, target)
        self.log = log or (lambda m: None)
        self.t = config.attacks_for(len(target.gallery), lambda m: self.log(f"audit: note: {m}"))
        self.target, self.config, self.extra_record = target, config, record or {}
        self.progress, self.index = progress, index
        self.bar: Any = None  # the progress bar while the cells run
        self.oracle: Oracle | None = None  # the local oracle, made for the first query cell
        self.columns = ColumnSelections(target.gallery, self.t, config.seed)
        self.probes = probes  # reused from a quick look's sizing (None: probe)
        self.time: TimeModel | None = None  # the time model, while the cells run
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
                "query_oracle": "local" if config.query_endpoint is None else "endpoint",
                **config.upload_identity()}

    def check_cell(self, key: str, cell) -> str | None:
        return check_cell(key, cell)

    def record(self) -> dict[str, Any]:
        settings = {k: v for k, v in asdict(self.config).items() if k != "options"}
        return {**self.extra_record, "audit": settings}

    def cells(self, store: Store) -> list[Cell]:
        config = self.config
        work = self.work(None)
        return [Cell("retrieval", partial(self._begin, "retrieval", retrieval_figures,
                                          self.target, config.max_queries, config.seed)),
                *(Cell(key, partial(self._begin, key, self.cell, a, e))
                  for key, a, e in work.white_box),
                *(Cell(key, partial(self._begin, key, self.query_cell, a, e))
                  for key, a, e in work.query),
                *(Cell(key, partial(self._begin, key, self.transfer_cell, a, e))
                  for key, a, e in work.transfer),
                *(Cell(key, partial(self._begin, key, catalog.upload_cell if key.startswith(
                    "catalog|") else catalog.query_cell, self, self.link, a, e))
                  for key, a, e in work.catalog),
                *([] if self.text is None else [
                    Cell(c.key, partial(self._begin, c.key, c.compute))
                    for c in self.text.cells(lambda: self.bar)])]

    def _begin(self, key: str, compute: Callable[..., Any], *args: Any) -> Any:
        """Compute a cell, telling the time model when it starts."""
        if self.time is not None:
            self.time.begin(key)
        return compute(*args)

    def work(self, store: Store | None) -> Work:
        """The cells left (all of them without ``store``), in the order they run."""
        config = self.config
        left = [(cell_key(a, e, config.size(self.kinds[a])), a, e) for a in self.kinds
                for e in config.eps_values]
        query = [(key, a, e) for a, e, key in deployed.query_cells(self.kinds, config)]
        moved = [(key, a, e)
                 for a, e, key in deployed.transfer_cells(self.kinds, config, self.source)]
        uploads = [(key, a, e) for a, e, key in catalog.catalog_cells(
            self.kinds, config, None if self.link is None else self.link.key)]

        def todo(cells):
            return [c for c in cells if store is None or c[0] not in store]

        return Work(todo(left), todo(query), todo(moved), config.examples > 0,
                    store is None or "retrieval" not in store, todo(uploads))

    def plan(self, store: Store | None = None):
        """``(cells left, probes)``: the cells left, each priced from its probe (the probes
        run here unless this audit was given them)."""
        from advrank.oracles import make_oracle

        config = self.config

        def oracle():  # the probe's own oracle, like the cells' one
            return make_oracle("local", self.target, config.feedback or "full")

        def select(attack: str):
            kind = self.kinds[attack]
            return self.columns(attack, kind, config.size(kind))[0]

        cells, probes = plan_cells(self.target, self.kinds, config, self.t, select,
                                   self.work(store), self.index, self.source, oracle,
                                   self.probes, self.link)
        if self.text is not None:  # priced as the picture cells of their kinds
            left = [(key, a, e) for a, e, key in self.text.keys()
                    if store is None or key not in store]
            cells += text_cells(left, self.kinds, config, self.t, probes)
        return cells, probes

    def announce(self, todo: int, done: int) -> str:
        return (f"audit: {todo} cells to run ({done} already done), T = {self.t}, "
                f"|X| = {len(self.target.gallery)}")

    @contextlib.contextmanager
    def running(self, store: Store):
        """The estimate before the first attack (priced from probes), then one progress bar
        over every cell and the example panels, its time left from the same estimate as
        corrected by the cells that finished. Interrupted (Ctrl-C), it writes a report.html
        of what is done, marked partial, before the interruption goes on."""
        cells, probes = self.plan(store)
        self.time = TimeModel(cells, probes)
        self.log(estimate_message(self.time,
                                  None if self.config.quick else settings.QUICK_ADVICE))
        try:
            with EstimateBar(self.time, self.progress) as self.bar:
                yield
        except KeyboardInterrupt:
            self.bar = None
            self.publish_partial(store)
            raise
        finally:
            if self.oracle is not None:  # an endpoint's connections
                self.oracle.close()
                self.oracle = None
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
        """The query-only attacks of one (attack, eps): the white-box cell's selection (at
        top-k feedback, its queries with targets from their visible lists), through the local
        oracle or the config's endpoint (calibrated first), every figure read from its
        answers, with the best-so-far rank at each of the config's query marks."""
        from advrank.experiments.query import run_query_attack

        kind, config = self.kinds[attack], self.config
        if self.oracle is None:
            self.oracle = deployed.query_oracle(self.target, config)
        k = config.size(kind)
        selection, _ = self.columns(attack, kind, k)
        if config.feedback not in (None, "full"):  # candidates the attacker can see
            selection = None
        result = run_query_attack(self.target, kind, self.oracle, config.optimizer, float(eps),
                                  k, self.t, config.query_budget, seed=config.seed,
                                  batch_size=config.batch_size, selection=selection,
                                  progress=False, checkpoints=config.query_marks,
                                  endpoint_differs=config.endpoint_differs)
        if self.bar is not None:
            self.bar.update(result.num_attacks)
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
        if self.time is not None:
            self.time.finish(cell.key, seconds)
        if cell.key != "retrieval":
            how = {"query": f" query-only ({value.get('queries_used', 0):.0f} queries)",
                   "transfer": " transfer", PREFIX: " text queries", RETRIEVAL: None,
                   "catalog": " after upload", "catalog-query": " query-only upload"
                   }.get(cell.key.partition("|")[0], "")
            fig = "endpoint" if cell.key.startswith("catalog") else "rank"
            if how is None:
                return
            with self.bar.external_write_mode():  # a line above the bar, not through it
                log(f"  {value['attack']} eps={format_eps(value['eps'])}{how}: rank "
                    f"{value[f'{fig}_before']:.1f} -> {value[f'{fig}_after']:.1f}% "
                    f"({value['seconds']:.0f}s)")

    def publish(self, store: Store, computed: list[str]) -> dict[str, Any]:
        if self.time is not None:
            self.time.begin("panels")
        panels = example_panels(self.target, self.kinds, self.config, self.t, self.bar)
        text_panels = [] if self.text is None else self.text.panels(self.bar)
        if self.time is not None:
            self.time.finish("panels")
        return self._write(store, panels, text_panels)

    def publish_partial(self, store: Store) -> None:
        """report.json's summary and report.html of the cells finished so far, marked
        partial (no example panels: they would re-run attacks); nothing before the
        retrieval figures exist."""
        if "retrieval" not in store or not store.writer:
            return
        done = sum(key != "retrieval" for key in store.cells)
        total = len(self.cells(store)) - 1
        self._write(store, [], [], {"cells_done": done, "cells": total})
        self.log(f"audit: interrupted; wrote a partial report ({done} of {total} cells) to "
                 f"{store.dir / settings.REPORT_HTML}; rerun the same command to finish it")

    def _write(self, store: Store, panels: list[dict], text_panels: list[dict],
               unfinished: dict[str, int] | None = None) -> dict[str, Any]:
        """The summary (verdict, deployed view, timing, the text section once its cells are
        done), report.json's readers' part and report.html (and the rank-vs-queries plot)."""
        from advrank.reports.html import audit_html

        summary = audit_summary(store, self.kinds, self.config, self.target)
        examples = [p["figures"] for p in panels]
        if self.text is not None and self.text.done(store):
            summary["text"] = {**self.text.summary(store),
                               "examples": [p["figures"] for p in text_panels]}
        summary["verdict"] = audit_verdict(summary["attacks"], examples)
        summary["deployed"] = deployed.deployed_view(
            store, self.kinds, self.config, self.index, self.source,
            None if self.link is None else (self.link.key, self.link.url))
        if summary["deployed"] is not None:
            summary["verdict"]["deployed"] = deployed.deployed_worst(summary["deployed"])
        summary["estimate"] = None if self.time is None else self.time.record()
        summary["partial"] = unfinished
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
              source: Target | None = None, link: catalog.CatalogLink | None = None
              ) -> dict[str, Any]:
    """Run (or resume) the audit into ``out_dir``; returns the summary that ``--json``
    prints (``recall@1``, ``map``, ``gallery_size``, ``attacks``: one row per cell,
    ``deployed``: :func:`deployed_view`, ``estimate``: the estimated and actual time...).
    ``index``: a :class:`~advrank.core.index.VectorIndex` over the gallery whose ranks are
    measured beside the exact ones (``*_index``), part of the audit's identity. ``source``:
    another model on the same collection whose white-box attacks are ranked by the audited
    one (the deployed view's transfer rows). ``force``: overwrite a report.html that is not
    this run's and start over. ``link``: the writable service of the catalog rows
    (``config.catalog``). A quick look (``config.quick``) first sizes its T
    (:func:`fit_quick_look`)."""
    log = log or progress_log(progress)
    config, probes = config or AuditConfig(), None
    if config.quick is not None:
        config, probes = fit_quick_look(target, out_dir, config, log, index, source, force,
                                        link)
    audit = Audit(target, config, record, progress, log, index, source, probes, link)
    audit.force = force
    summary = run(audit, out_dir, log)
    folder = Path(out_dir)
    return {**summary, "out": str(out_dir), "report_html": str(folder / settings.REPORT_HTML),
            "report_json": str(folder / settings.REPORT_JSON)}


def _stored_quick_t(out_dir: str | Path, config: AuditConfig) -> int | None:
    """The T of the quick look with these minutes already in ``out_dir`` (None if none)."""
    from advrank.core.io import read_json

    path = Path(out_dir) / settings.REPORT_JSON
    try:
        old = read_json(path, "audit results") if path.is_file() else None
    except AdvrankError:
        return None  # the store says what is wrong with it
    cfg = old.get("config") if isinstance(old, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("audit"), dict) or \
            cfg["audit"].get("quick") != config.quick:
        return None
    t = cfg.get("num_attacks")
    return t if isinstance(t, int) and not isinstance(t, bool) else None


def fit_quick_look(target: Target, out_dir: str | Path, config: AuditConfig,
                   log: Callable[[str], None], index=None, source: Target | None = None,
                   force: bool = False, link: catalog.CatalogLink | None = None
                   ) -> tuple[AuditConfig, dict | None]:
    """The quick look's settings: T per cell is the quick look's already in ``out_dir`` (so
    that rerunning resumes it), else the largest of its candidates (100, 80, 60, ... 10,
    capped by |X| and ``num_attacks``) whose estimate fits ``config.quick`` minutes, all
    priced from one set of probes (returned, for the audit to reuse)."""
    low, high = config.quick_bounds(len(target.gallery))
    stored = None if force else _stored_quick_t(out_dir, config)
    if stored is not None and low <= stored <= high:
        return replace(config, num_attacks=stored), None
    candidates = sorted({high, low, *(v for v in settings.QUICK_STEPS if low < v < high)},
                        reverse=True)
    probes, chosen, first = None, low, None
    for t in candidates:
        audit = Audit(target, replace(config, num_attacks=t), None, False, log, index, source,
                      probes, link)
        cells, probes = audit.plan()
        seconds = sum(c.seconds for c in cells)
        first = seconds if first is None else first
        if seconds <= config.quick * 60:
            chosen = t
            break
    eps = ", ".join(format_eps(e) for e in config.eps_values)
    log(f"audit: quick look: T = {chosen} attacks per cell at eps = {eps}, sized to fit about "
        f"{config.quick:g} min" + (f" (T = {high} would take about {format_duration(first)})"
                                   if chosen < high else ""))
    return replace(config, num_attacks=chosen), probes


def audit_summary(st: Store, kinds: dict[str, AttackKind], config: AuditConfig,
                  target: Target) -> dict[str, Any]:
    """The figures a reader wants first: retrieval, and one row per (attack, eps) cell
    (per finished one, in a partial report)."""
    retrieval = st.get("retrieval")
    rows = []
    for attack in kinds:
        for eps in config.eps_values:
            k = config.size(kinds[attack])
            cell = st.get(cell_key(attack, eps, k))
            if cell is None:  # a partial report: not run yet
                continue
            rows.append({"attack": attack, "eps": float(eps), "k": k,
                         "direction": kinds[attack].direction,
                         **{key: cell[key] for key in cell if key.endswith(("_before",
                            "_after", "_se", "_max"))}, "num_attacks": cell["num_attacks"],
                         "seconds": cell["seconds"]})
    return {"recall@1": retrieval["recall@1"], "map": retrieval["map"],
            "gallery_size": retrieval["gallery_size"], "retrieval": retrieval,
            "unreadable_images": target.info.get("unreadable_images", 0),
            "unreadable": target.info.get("unreadable", []), "attacks": rows}
