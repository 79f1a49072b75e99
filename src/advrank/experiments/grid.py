"""The paper's attack grid (Tables 1-4): every attack x eps x w/m cell, resumable.

``run_grid`` writes ``results.json`` through the store after every cell; rerunning the same
command skips the cells already there, so an interrupted grid continues where it stopped. At
the end it writes ``results.csv`` and ``table.md`` (laid out like Table 1, paper figures in
brackets).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from advrank.attacks.base import check_fits_all, make_kinds
from advrank.attacks.threat import LinfThreatModel
from advrank.core import distributed
from advrank.core.checks import (
    check_int,
    check_list,
    check_name,
    check_progress,
    check_seed,
    format_eps,
)
from advrank.core.execution import ExecutionPolicy, get_policy
from advrank.core.gallery import Gallery
from advrank.core.io import read_json
from advrank.core.runtime import derived_seed
from advrank.errors import AdvrankError
from advrank.experiments.paper import PAPER_ATTACKS, paper_table_for
from advrank.experiments.protocol import (
    check_batch_size,
    check_cell_options,
    check_gallery,
    run_attack,
)
from advrank.experiments.store import Store, figures_problem, is_number
from advrank.reports.tables import csv_table, headline_of, markdown_table

RESULTS, CSV, TABLE = "results.json", "results.csv", "table.md"
FORMAT = "advrank-grid"
#: identity values of grids written before the setting existed
IMPLIED_IDENTITY = {"precision": "fp32", "index": None, "pipeline": None,
                    "through_pipeline": False}


def cell_key(attack: str, eps: float, k: int) -> str:
    return f"{attack}|{eps:g}|{k}"


def check_cell(key: str, cell) -> str | None:
    """Why a stored grid cell cannot be reused (None if it can): a summary of the attack,
    eps and k its key names, with finite figures."""
    problem = figures_problem(cell, ("rank_before", "rank_after", "rank_after_se"))
    if problem:
        return problem
    attack, eps, k = cell.get("attack"), cell.get("eps"), cell.get("k")
    if not isinstance(attack, str) or not is_number(eps) or \
            not isinstance(k, int) or isinstance(k, bool) or cell_key(attack, eps, k) != key:
        return "its attack, eps and k do not match its key"
    return None


def selection_seed(seed: int, attack: str, k: int) -> int:
    """One selection per (attack, k), shared by every eps row, so rows differ only in eps."""
    return derived_seed(seed, attack, k)


def load_results(out_dir: str | Path) -> dict:
    """Read a grid's ``results.json`` (``{"config": ..., "cells": {key: summary}}``)."""
    path = Path(out_dir) / RESULTS
    if not path.exists():
        raise AdvrankError(f"no grid results at {path}")
    return read_json(path, "grid results")


def run_grid(
    model: nn.Module, gallery: Gallery, out_dir: str | Path, eps_values: Sequence[float],
    ks: Sequence[int] = (1, 2, 5, 10), attacks: Sequence[str] = PAPER_ATTACKS,
    num_attacks: int = 1000, seed: int = 0, batch_size: int = 256, paper: str | None = None,
    meta: dict | None = None, progress: bool = True, policy: ExecutionPolicy | None = None,
    index=None, pipeline=None, through_pipeline: bool = False, **options,
) -> dict:
    """Run (or resume) the grid; returns ``{"config", "cells"}`` as also written to disk.

    ``options`` go to the kinds that accept them (e.g. ``sp_reduction``, ``xi`` for QA).
    ``policy``: precision (part of the grid's identity: fp32 and bf16 cells never mix) and
    memory budget. ``index``: a VectorIndex whose ranks are measured beside the exact ones
    (part of the grid's identity). ``pipeline`` (``png``, ``jpeg:75`` or an ImagePipeline):
    the upload pipeline whose figures are measured beside the float ones, attacked through
    when ``through_pipeline`` (both part of the grid's identity). Under torchrun every cell
    is shared by the processes and rank 0 writes.
    """
    check_gallery(model, gallery)
    kinds = make_kinds(check_list(attacks, "attacks", lambda a: check_name(a, "attack")),
                       options)
    # every row's eps and every cell's size checked before the first cell runs
    eps_values = check_list(eps_values, "eps values", lambda e: LinfThreatModel(e).eps)
    upload = LinfThreatModel(0.0, pipeline=pipeline, through_pipeline=through_pipeline)
    ks = check_list(ks, "w/m values", lambda k: check_int(k, "w/m"))
    num_attacks = check_int(num_attacks, "number of attacks")
    seed, batch_size = check_seed(seed), check_batch_size(batch_size)
    check_progress(progress)
    policy = get_policy(policy)
    if paper is not None:
        paper_table_for({}, paper)
    if meta is not None and not isinstance(meta, dict):
        raise AdvrankError(f"meta must be a dict, got {type(meta).__name__}")
    check_fits_all(kinds.values(), ks, num_attacks, len(gallery))
    identity = {"num_attacks": num_attacks, "seed": seed, "gallery_size": len(gallery),
                "checkpoint_sha": (meta or {}).get("checkpoint_sha"),
                "precision": policy.precision,
                "index": None if index is None else index.spec,
                "pipeline": None if upload.pipeline is None else upload.pipeline.spec,
                "through_pipeline": upload.through_pipeline}
    record = {"eps_values": list(eps_values), "ks": list(ks), "attacks": list(kinds),
              "paper": paper, "memory_budget": policy.memory_budget, **(meta or {})}
    keys = {cell_key(a, e, k) for a in kinds for k in ks for e in eps_values}
    if len(keys) != len(kinds) * len(ks) * len(eps_values):
        raise AdvrankError("eps values that agree to 6 significant digits are one table row; "
                           "give each eps once")
    progress = progress is not False and distributed.is_main()
    with Store(out_dir, RESULTS, FORMAT, identity, record, implied=IMPLIED_IDENTITY,
               check_cell=check_cell) as st:
        check_cell_options(st.path, st.cells.values(), kinds)
        # a kind without a size parameter (TMA, ES, ...) has one column, k = 1
        todo = [(a, k, e) for a in kinds for k in kinds[a].sizes(ks)
                for e in eps_values if cell_key(a, e, k) not in st]
        if progress and todo:
            print(f"grid: {len(todo)} cells to run ({len(st.cells)} already done)",
                  file=sys.stderr)
        selections: dict = {}
        for attack, k, eps in todo:
            kind = kinds[attack]
            if (attack, k) not in selections:  # one draw (and one "before" measurement) per column
                selections[(attack, k)] = (
                    kind.select(gallery, k, num_attacks, selection_seed(seed, attack, k)), {})
            selection, clean_cache = selections[(attack, k)]
            threat = dataclasses.replace(upload, eps=eps)
            result = run_attack(model, gallery, kind, eps, k, num_attacks, seed=seed,
                                batch_size=batch_size, threat=threat, selection=selection,
                                progress=progress, clean_cache=clean_cache, policy=policy,
                                index=index)
            summary = result.summary()
            st.put(cell_key(attack, eps, k), summary)
            if progress:
                fig = kind.headline
                print(f"  {attack} eps={format_eps(eps)} k={k}: {fig} "
                      f"{summary[f'{fig}_before']:.3g} -> "
                      f"{summary[f'{fig}_after']:.3g}{kind.unit} ({summary['seconds']:.0f}s)",
                      file=sys.stderr)
        results = st.content()
        write_tables(st, results)
    return results


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
             + (" (paper's figure)" if paper else ""))
    store.write_text(CSV, csv_table(cells, paper))
    table = markdown_table(cells, paper, title=title)
    if cfg.get("pipeline"):  # the same cells as a deployed search ranks them
        through = "attacked through it" if cfg.get("through_pipeline") else \
            "attacked on float pixels"
        table += "\n" + markdown_table(
            [{**c, "headline": f"{headline_of(c)[0]}_pipeline"} for c in cells],
            title=f"After the upload pipeline {cfg['pipeline']} ({through}): the same cells "
                  "measured on the adversarial images as the search service decodes them")
    store.write_text(TABLE, table)
