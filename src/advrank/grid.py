"""The paper's attack grid (Tables 1-4): every attack x eps x w/m cell, resumable.

``run_grid`` writes ``results.json`` atomically after every cell; rerunning the same command
skips the cells already there, so an interrupted grid continues where it stopped. At the end
it writes ``results.csv`` and ``table.md`` (laid out like Table 1, paper figures in brackets).
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from advrank.attacks.ranking import ATTACKS, parse_attack
from advrank.errors import AdvrankError
from advrank.protocol import Gallery, run_attack, select
from advrank.reports import csv_table, markdown_table
from advrank.utils import atomic_write_json, atomic_write_text

RESULTS, CSV, TABLE = "results.json", "results.csv", "table.md"


def cell_key(attack: str, eps: float, k: int) -> str:
    return f"{attack}|{eps:g}|{k}"


def selection_seed(seed: int, attack: str, k: int) -> int:
    """One selection per (attack, k), shared by every eps row, so rows differ only in eps."""
    return (seed * 1_000_003 + zlib.crc32(f"{attack}|{k}".encode())) % 2**31


def load_results(out_dir: str | Path) -> dict:
    """Read a grid's ``results.json`` (``{"config": ..., "cells": {key: summary}}``)."""
    path = Path(out_dir) / RESULTS
    if not path.exists():
        raise AdvrankError(f"no grid results at {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AdvrankError(f"{path} is not valid JSON: {exc}") from None


def run_grid(
    model: nn.Module, gallery: Gallery, out_dir: str | Path, eps_values: Sequence[float],
    ks: Sequence[int] = (1, 2, 5, 10), attacks: Sequence[str] = ATTACKS, num_attacks: int = 1000,
    seed: int = 0, batch_size: int = 256, paper: str | None = None, meta: dict | None = None,
    progress: bool = True, g: int = 5, sp_reduction: str = "sum",
) -> dict:
    """Run (or resume) the grid; returns ``{"config", "cells"}`` as also written to disk."""
    out_dir = Path(out_dir)
    attacks = [parse_attack(a).name for a in attacks]
    config = {"num_attacks": num_attacks, "seed": seed, "eps_values": list(eps_values),
              "ks": list(ks), "attacks": attacks, "gallery_size": len(gallery), "g": g,
              "paper": paper, "sp_reduction": sp_reduction, **(meta or {})}
    results = {"config": config, "cells": {}}
    path = out_dir / RESULTS
    if path.exists():
        old = load_results(out_dir)
        implied = {"sp_reduction": "sum"}  # grids written before the option existed
        for key in ("num_attacks", "seed", "gallery_size", "checkpoint_sha", "sp_reduction"):
            if old["config"].get(key, implied.get(key)) != config.get(key):
                raise AdvrankError(
                    f"{path} holds a grid with {key}={old['config'].get(key)!r}, this run has "
                    f"{config.get(key)!r}; use another --out or remove it"
                )
        results["cells"] = old.get("cells", {})
    todo = [(a, k, e) for a in attacks for k in ks for e in eps_values
            if cell_key(a, e, k) not in results["cells"]]
    if progress and todo:
        print(f"grid: {len(todo)} cells to run ({len(results['cells'])} already done)",
              file=sys.stderr)
    selections: dict = {}
    for attack, k, eps in todo:
        if (attack, k) not in selections:  # one draw (and one "before" measurement) per column
            selections[(attack, k)] = (select(gallery, attack, k, num_attacks,
                                              selection_seed(seed, attack, k), g), {})
        selection, clean_cache = selections[(attack, k)]
        result = run_attack(model, gallery, attack, eps, k, num_attacks, seed=seed,
                            batch_size=batch_size, g=g, selection=selection,
                            progress=progress, clean_cache=clean_cache,
                            sp_reduction=sp_reduction)
        summary = result.summary()
        results["cells"][cell_key(attack, eps, k)] = summary
        atomic_write_json(path, results)
        if progress:
            print(f"  {attack} eps={eps:g} k={k}: {summary['rank_before']:.1f} -> "
                  f"{summary['rank_after']:.1f}% ({summary['seconds']:.0f}s)", file=sys.stderr)
    write_tables(out_dir, results)
    return results


def write_tables(out_dir: str | Path, results: dict) -> None:
    """(Re)write ``results.csv`` and ``table.md`` from a grid's results."""
    out_dir = Path(out_dir)
    cells = sorted(results["cells"].values(), key=lambda c: (c["attack"], c["k"], c["eps"]))
    paper = results["config"].get("paper")
    cfg = results["config"]
    title = (f"{cfg.get('dataset', '?')} / {cfg.get('arch', '?')} / {cfg.get('metric', '?')} "
             f"(R@1 = {cfg.get('recall@1', float('nan')):.1f}%), T = {cfg['num_attacks']} "
             f"attacks per cell, |X| = {cfg['gallery_size']}; cell = mean rank after attack "
             f"(%) ± standard error" + (" (paper's figure)" if paper else ""))
    atomic_write_text(out_dir / CSV, csv_table(cells, paper))
    atomic_write_text(out_dir / TABLE, markdown_table(cells, paper, title=title))
