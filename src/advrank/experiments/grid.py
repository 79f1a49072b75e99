"""The paper's attack grid (Tables 1-4): every attack x eps x w/m cell, resumable.

``run_grid`` writes ``results.json`` through the store after every cell; rerunning the same
command skips the cells already there, so an interrupted grid continues where it stopped. At
the end it writes ``results.csv`` and ``table.md`` (laid out like Table 1, paper figures in
brackets).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from torch import nn

from advrank.attacks.base import check_fits_all, make_kinds
from advrank.attacks.queryset import QuerySet, check_query_set
from advrank.attacks.threat import LinfThreatModel
from advrank.core import distributed
from advrank.core.checks import check_int, check_list, format_eps
from advrank.core.execution import ExecutionPolicy, get_policy
from advrank.core.gallery import Gallery
from advrank.core.io import read_json
from advrank.errors import AdvrankError
from advrank.experiments.paper import PAPER_ATTACKS, paper_lookup, paper_table_for
from advrank.experiments.protocol import ColumnSelections, check_gallery, check_run, run_attack
from advrank.experiments.results import cell_key, check_cell_options
from advrank.experiments.results import check_attack_cell as check_cell
from advrank.experiments.runner import Cell, Experiment, progress_log, run
from advrank.experiments.store import Store
from advrank.reports.tables import csv_table, headline_of, markdown_table

RESULTS, CSV, TABLE = "results.json", "results.csv", "table.md"
FORMAT = "advrank-grid"
#: identity values of grids written before the setting existed
IMPLIED_IDENTITY = {"precision": "fp32", "index": None, "pipeline": None,
                    "through_pipeline": False, "text_queries": None}




def load_results(out_dir: str | Path) -> dict:
    """Read a grid's ``results.json`` (``{"config": ..., "cells": {key: summary}}``)."""
    path = Path(out_dir) / RESULTS
    if not path.exists():
        raise AdvrankError(f"no grid results at {path}")
    return read_json(path, "grid results")


class Grid(Experiment):
    """The grid's declaration: one cell per (attack, eps, w/m), every setting checked at
    construction (before any work); see :func:`run_grid`."""

    name, filename, format, implied = "grid", RESULTS, FORMAT, IMPLIED_IDENTITY

    def __init__(self, model: nn.Module, gallery: Gallery, eps_values: Sequence[float],
                 ks: Sequence[int], attacks: Sequence[str], num_attacks: int, seed: int,
                 batch_size: int, paper: str | None, meta: dict | None, progress: bool,
                 policy: ExecutionPolicy | None, index, options: dict, pipeline=None,
                 through_pipeline: bool = False, queries: QuerySet | None = None):
        check_gallery(model, gallery)
        self.kinds = make_kinds(attacks, options)
        if queries is not None:  # Q from a text set: the kinds that take one, or an error
            check_query_set(queries, gallery)
            self.kinds = {a: kind.for_queries(queries) for a, kind in self.kinds.items()}
        self.queries = queries
        # every row's eps and every cell's size checked before the first cell runs
        self.eps_values = check_list(eps_values, "eps values", lambda e: LinfThreatModel(e).eps)
        self.upload = LinfThreatModel(0.0, pipeline=pipeline, through_pipeline=through_pipeline)
        self.ks = check_list(ks, "w/m values", lambda k: check_int(k, "w/m"))
        num_attacks, self.seed, self.batch_size = check_run(num_attacks, seed, batch_size,
                                                            progress)
        self.num_attacks = check_int(num_attacks, "number of attacks")  # None: refused
        self.policy = get_policy(policy)
        if paper is not None:
            paper_table_for(None, paper)
        if meta is not None and not isinstance(meta, dict):
            raise AdvrankError(f"meta must be a dict, got {type(meta).__name__}")
        check_fits_all(self.kinds.values(), self.ks, self.num_attacks, len(gallery))
        keys = {cell_key(a, e, k) for a in self.kinds for k in self.ks for e in self.eps_values}
        if len(keys) != len(self.kinds) * len(self.ks) * len(self.eps_values):
            raise AdvrankError("eps values that agree to 6 significant digits are one table "
                               "row; give each eps once")
        self.model, self.gallery, self.index = model, gallery, index
        self.paper, self.meta = paper, meta or {}
        self.progress = progress is not False and distributed.is_main()
        self.columns = ColumnSelections(gallery, self.num_attacks, self.seed)

    def identity(self) -> dict:
        return {"num_attacks": self.num_attacks, "seed": self.seed,
                "gallery_size": len(self.gallery),
                "checkpoint_sha": self.meta.get("checkpoint_sha"),
                "precision": self.policy.precision,
                "index": None if self.index is None else self.index.spec,
                "pipeline": self.upload.pipeline_spec,
                "through_pipeline": self.upload.through_pipeline,
                "text_queries": None if self.queries is None else {
                    k: self.queries.info.get(k) for k in ("text_queries", "text_queries_sha")}}

    def record(self) -> dict:
        return {"eps_values": list(self.eps_values), "ks": list(self.ks),
                "attacks": list(self.kinds), "paper": self.paper,
                "memory_budget": self.policy.memory_budget, **self.meta}

    def check_cell(self, key: str, cell) -> str | None:
        return check_cell(key, cell)

    def prepare(self, store: Store) -> None:
        check_cell_options(store.path, store.cells.values(), self.kinds)

    def cells(self, store: Store) -> list[Cell]:
        # a kind without a size parameter (TMA, ES, ...) has one column, k = 1
        return [Cell(cell_key(a, e, k), partial(self.cell, a, e, k))
                for a in self.kinds for k in self.kinds[a].sizes(self.ks)
                for e in self.eps_values]

    def cell(self, attack: str, eps: float, k: int) -> dict:
        kind = self.kinds[attack]
        selection, clean_cache = self.columns(attack, kind, k)
        return run_attack(self.model, self.gallery, kind, eps, k, self.num_attacks,
                          seed=self.seed, batch_size=self.batch_size, selection=selection,
                          threat=dataclasses.replace(self.upload, eps=eps),
                          progress=self.progress, clean_cache=clean_cache, policy=self.policy,
                          index=self.index).summary()

    def finished(self, store: Store, cell: Cell, value: dict, seconds: float, log) -> None:
        kind = self.kinds[value["attack"]]
        fig = kind.headline
        log(f"  {value['attack']} eps={format_eps(value['eps'])} k={value['k']}: {fig} "
            f"{value[f'{fig}_before']:.3g} -> {value[f'{fig}_after']:.3g}{kind.unit} "
            f"({value['seconds']:.0f}s)")

    def publish(self, store: Store, computed: list[str]) -> dict:
        results = store.content()
        write_tables(store, results)
        return results


def run_grid(
    model: nn.Module, gallery: Gallery, out_dir: str | Path, eps_values: Sequence[float],
    ks: Sequence[int] = (1, 2, 5, 10), attacks: Sequence[str] = PAPER_ATTACKS,
    num_attacks: int = 1000, seed: int = 0, batch_size: int = 256, paper: str | None = None,
    meta: dict | None = None, progress: bool = True, policy: ExecutionPolicy | None = None,
    index=None, pipeline=None, through_pipeline: bool = False, queries: QuerySet | None = None,
    **options,
) -> dict:
    """Run (or resume) the grid; returns ``{"config", "cells"}`` as also written to disk.

    ``options`` go to the kinds that accept them (e.g. ``sp_reduction``, ``xi`` for QA).
    ``policy``: precision (part of the grid's identity: fp32 and bf16 cells never mix) and
    memory budget. ``index``: a VectorIndex whose ranks are measured beside the exact ones
    (part of the grid's identity). ``pipeline`` (``png``, ``jpeg:75`` or an ImagePipeline):
    the upload pipeline whose figures are measured beside the float ones, attacked through
    when ``through_pipeline`` (both part of the grid's identity). ``queries``: a text query
    set (:func:`~advrank.attacks.queryset.embed_text_queries`) the candidate attacks draw Q
    from (part of the grid's identity). Under torchrun every cell is shared by the processes
    and rank 0 writes.
    """
    grid = Grid(model, gallery, eps_values, ks, attacks, num_attacks, seed, batch_size, paper,
                meta, progress, policy, index, options, pipeline, through_pipeline, queries)
    return run(grid, out_dir, progress_log(grid.progress))


def write_tables(store: Store, results: dict) -> None:
    """(Re)write ``results.csv`` and ``table.md`` from a grid's results."""
    cells = sorted(results["cells"].values(), key=lambda c: (c["attack"], c["k"], c["eps"]))
    cfg = results["config"]
    paper = cfg.get("paper")
    r1 = cfg.get("recall@1")
    title = (f"{cfg.get('dataset', '?')} / {cfg.get('arch', '?')} / {cfg.get('metric', '?')} "
             f"(R@1 = {'?' if r1 is None else f'{r1:.1f}'}%), T = {cfg['num_attacks']} "
             f"attacks per cell, |X| = {cfg['gallery_size']}; cell = mean of the attack's headline "
             f"figure after attack (normalized rank, %, for CA/QA) ± standard error"
             + (" (paper's figure)" if paper else "")
             + (f"; queries: the texts of {cfg['text_queries']['text_queries']}"
                if cfg.get("text_queries")
                else ""))
    store.write_text(CSV, csv_table(cells, paper_lookup(paper)))
    table = markdown_table(cells, paper_lookup(paper), title=title)
    if cfg.get("pipeline"):  # the same cells as a deployed search ranks them
        through = "attacked through it" if cfg.get("through_pipeline") else \
            "attacked on float pixels"
        table += "\n" + markdown_table(
            [{**c, "headline": f"{headline_of(c)[0]}_pipeline"} for c in cells],
            title=f"After the upload pipeline {cfg['pipeline']} ({through}): the same cells "
                  "measured on the adversarial images as the search service decodes them")
    store.write_text(TABLE, table)
