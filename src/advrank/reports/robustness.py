"""Markdown for the Empirical Robustness Score: one model's ten scores (``robustness.md``), and
a robrank-style comparison of several models beside robrank's published rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: how many decimals each raw score is printed with (robrank's dmltab layout)
DIGITS = {"TMA": 3, "ES:D": 3}


def _raw(name: str, value: float | None) -> str:
    return "–" if value is None else f"{value:.{DIGITS.get(name, 1)}f}"


def robustness_markdown(result: dict, scores: Sequence[Any]) -> str:
    """One model: a row per score (attack, figure, clean value, raw score after attack,
    rescaled), then ERS with its bootstrap interval and the run's provenance. ``scores``: the
    ERS scores in table order, each with ``name``, ``attack`` and ``figure``."""
    cfg = result["config"]
    threat = cfg["threat"]
    lines = [
        f"# Empirical Robustness Score ({result['profile']})", "",
        f"Model: {cfg.get('checkpoint')} ({cfg.get('dataset')}/{cfg.get('arch')}/"
        f"{cfg.get('metric')}, defense {cfg.get('defense') or 'none'}, R@1 "
        f"{_raw('', cfg.get('recall@1'))}%); |X| = {result['gallery_size']}, T = "
        f"{result['num_attacks']} attacks each; eps = {threat['eps']:.5f}, alpha = "
        f"{threat['step_size']:.5f}, {threat['steps']} PGD steps.", "",
        "| score | attack | figure | clean | raw (after attack) | rescaled |",
        "|---|---|---|---|---|---|",
    ]
    for s in scores:
        lines.append(f"| {s.name} | {s.attack} | {s.figure} | "
                     f"{_raw(s.name, result['clean'][s.name])} | "
                     f"{_raw(s.name, result['scores'][s.name])} | "
                     f"{result['rescaled'][s.name]:.1f} |")
    low, high = result["ers_ci"]
    lines += ["", f"**ERS = {result['ers']:.1f}** (95% bootstrap interval {low:.1f}–{high:.1f}, "
                  f"{result['bootstrap_resamples']} resamples over the attacks' items).", "",
              f"Command: `{cfg.get('command')}`; seed {cfg.get('seed')}, commit "
              f"{cfg.get('commit')}, {cfg.get('hardware')}, {cfg.get('date')}.", ""]
    return "\n".join(lines)


def comparison_markdown(rows: Iterable[dict], title: str = "") -> str:
    """robrank's dmltab layout, one row per model: ``label``, ``recall@1``, ``recall@2``,
    ``map``, ``nmi`` (%), the ten raw ``scores`` (``{name: value}``, in table order: the
    first row's order gives the columns), ``ers`` and ``ers_ci`` (None when unknown, e.g. for
    published rows)."""
    rows = list(rows)
    names = list(rows[0]["scores"]) if rows else []
    head = ["model", "R@1", "R@2", "mAP", "NMI", *names, "ERS"]
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        metrics = [_raw("", row.get(key)) for key in ("recall@1", "recall@2", "map", "nmi")]
        scores = [_raw(name, row["scores"].get(name)) for name in names]
        value = f"{row['ers']:.1f}"
        if row.get("ers_ci"):
            value += f" [{row['ers_ci'][0]:.1f}, {row['ers_ci'][1]:.1f}]"
        lines.append("| " + " | ".join([row["label"], *metrics, *scores, value]) + " |")
    return "\n".join(lines) + "\n"
