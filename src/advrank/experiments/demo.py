"""The main job on the embedded default dataset (scikit-learn's digits), end to end: train a
ranking model, evaluate it, attack it (a small grid), train a defended model, compare."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from advrank.core.gallery import Gallery
from advrank.core.runtime import resolve_device
from advrank.data import load_dataset
from advrank.defenses.base import make_defense
from advrank.experiments.curves import defense_comparison
from advrank.experiments.grid import run_grid
from advrank.models.checkpoint import model_from_checkpoint
from advrank.reports.tables import markdown_table
from advrank.training.trainer import TrainConfig, evaluate_model, train

DEMO_EPS = (0.0, 0.03, 0.1, 0.3)


def run_demo(out: str | Path, epochs: int = 15, num_attacks: int = 200,
             defense_epochs: int = 5, defense_steps: int = 10, seed: int = 0,
             device: str = "auto", log: Callable[[str], None] = lambda msg: None,
             progress: bool | None = None) -> tuple[dict[str, Any], str]:
    """Run the demo into ``out`` (resumable: finished steps are reused); returns the summary
    and a plain-text report."""
    t0, out, dev = time.time(), Path(out), resolve_device(device)
    ckpt = out / "digits-c2f1.pt"
    log(f"[1/3] training C2F1 on scikit-learn digits ({epochs} epochs) -> {ckpt}")
    config = TrainConfig(dataset="digits", arch="c2f1", epochs=epochs, seed=seed,
                         device=str(dev), embed_dim=128)
    train(config, ckpt, progress=progress)
    model, meta = model_from_checkpoint(ckpt, dev)
    test = load_dataset("digits", "test")
    metrics = evaluate_model(model, test, "cosine", dev, with_map=True)
    log(f"      R@1 {metrics['recall@1']:.1f}%  mAP {metrics['map']:.1f}%  "
        f"(|X| = {len(test)} test images)")
    log(f"[2/3] attack grid: CA+, CA-, QA+, QA- with w = m = 1, T = {num_attacks}")
    gallery = Gallery.build(model, test, "cosine", dev)
    grid = run_grid(model, gallery, out / "grid-vanilla", DEMO_EPS, ks=(1,),
                    num_attacks=num_attacks, seed=seed, progress=progress,
                    meta={"dataset": "digits", "arch": "c2f1", "metric": "cosine",
                          "recall@1": metrics["recall@1"]})
    cells = list(grid["cells"].values())
    text = markdown_table(cells, title="vanilla digits model: mean rank after attack (%)")
    defended = out / "digits-c2f1-est.pt"
    log(f"[3/3] embedding-shift adversarial training (Eq. 13, eps 0.3, {defense_steps} PGD "
        f"steps), fine-tuning {defense_epochs} epochs -> {defended}")
    defense = make_defense("est", eps=0.3, metric="cosine", steps=defense_steps)
    train(TrainConfig(dataset="digits", epochs=defense_epochs, seed=seed, device=str(dev)),
          defended, init=ckpt, defense=defense, progress=progress)
    log("      comparing the vanilla and the defended model (CA±/QA± and max shift at eps 0.3)")
    comparison = defense_comparison(ckpt, defended, eps=0.3, k=1, num_attacks=num_attacks,
                                    seed=seed, device=dev, progress=progress)
    text += "\nvanilla vs defended (embedding-shift adversarial training):\n"
    text += comparison["text"] + "\n"
    text += (f"(the comparison draws its own T = {num_attacks} attacks per model, with the same "
             "seed for both, independently of the grid's per-cell draws: its vanilla row differs "
             "from the grid's eps = 0.3 column by sampling error; the grid's results.json has "
             "each cell's standard error)\n")
    summary = {"vanilla": {"recall@1": metrics["recall@1"], "map": metrics["map"],
                           "cells": cells},
               "defense_comparison": {k: v for k, v in comparison.items() if k != "text"},
               "seconds": time.time() - t0}
    return summary, text + f"\ndemo finished in {summary['seconds']:.0f}s; outputs in {out}/"
