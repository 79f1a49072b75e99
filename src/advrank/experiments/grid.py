"""The paper's attack grid (Tables 1-4): every attack x eps x w/m cell, resumable.

``run_grid`` writes ``results.json`` through the store after every cell; rerunning the same
command skips the cells already there, so an interrupted grid continues where it stopped. At
the end it writes ``results.csv`` and ``table.md`` (laid out like Table 1, paper figures in
brackets).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from advrank.attacks.base import make_kinds
from advrank.core.gallery import Gallery
from advrank.core.io import read_json
from advrank.core.runtime import derived_seed
from advrank.errors import AdvrankError
from advrank.experiments.paper import PAPER_ATTACKS
from advrank.experiments.protocol import check_batch_size, check_cell_options, run_attack
from advrank.experiments.store import Store
from advrank.reports.tables import csv_table, markdown_table

RESULTS, CSV, TABLE = "results.json", "results.csv", "table.md"
FORMAT = "advrank-grid"


def cell_key(attack: str, eps: float, k: int) -> str:
    return f"{attack}|{eps:g}|{k}"


def selection_seed(seed: int, attack: str, k: int) -> int:
    """One selection per (attack, k), shared by every eps row, so rows differ only in eps."""
    return derived_seed(seed, attack, k)


def load_results(out_dir: str | Path) -> dict:
    """Read a grid's ``results.json`` (``{"config": ..., "cells": {key: summary}}``)."""
    path = Path(out_dir) / RESULTS
    if not path.exists():
        raise AdvrankError(f"no grid results at {path}")
    return read_json(path, "grid results")


def _unique(values: Sequence, what: str) -> list:
    out = list(dict.fromkeys(values))
    if not out:
        raise AdvrankError(f"give at least one {what}")
    return out


def run_grid(
    model: nn.Module, gallery: Gallery, out_dir: str | Path, eps_values: Sequence[float],
    ks: Sequence[int] = (1, 2, 5, 10), attacks: Sequence[str] = PAPER_ATTACKS,
    num_attacks: int = 1000, seed: int = 0, batch_size: int = 256, paper: str | None = None,
    meta: dict | None = None, progress: bool = True, **options,
) -> dict:
    """Run (or resume) the grid; returns ``{"config", "cells"}`` as also written to disk.

    ``options`` go to the kinds that accept them (e.g. ``sp_reduction``, ``xi`` for QA).
    """
    kinds = make_kinds(_unique(attacks, "attack"), options)
    eps_values, ks = _unique(eps_values, "eps value"), _unique(ks, "w/m value")
    batch_size = check_batch_size(batch_size)
    identity = {"num_attacks": num_attacks, "seed": seed, "gallery_size": len(gallery),
                "checkpoint_sha": (meta or {}).get("checkpoint_sha")}
    record = {"eps_values": list(eps_values), "ks": list(ks), "attacks": list(kinds),
              "paper": paper, **(meta or {})}
    with Store(out_dir, RESULTS, FORMAT, identity, record) as st:
        check_cell_options(st.path, st.cells.values(), kinds)
        # a kind without a size parameter (TMA, ES, ...) has one column, k = 1
        todo = [(a, k, e) for a in kinds for k in (ks if kinds[a].size_name else [1])
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
            result = run_attack(model, gallery, kind, eps, k, num_attacks, seed=seed,
                                batch_size=batch_size, selection=selection, progress=progress,
                                clean_cache=clean_cache)
            summary = result.summary()
            st.put(cell_key(attack, eps, k), summary)
            if progress:
                fig = kind.headline
                print(f"  {attack} eps={eps:g} k={k}: {fig} {summary[f'{fig}_before']:.3g} -> "
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
    store.write_text(TABLE, markdown_table(cells, paper, title=title))
