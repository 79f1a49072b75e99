"""The Markdown table of a defense comparison from RESULTS/DATASET/DEFENSE/{evaluate,
robustness}.json (written by scripts/defense_runs.sh): R@1, ERS with its bootstrap 95% interval
and, with --scores, robrank's ten raw scores.

    python3 scripts/defense_table.py RESULTS DATASET [DATASET ...] [--scores] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAMES = {"none": "vanilla", "est": "EST", "act": "ACT", "hm": "HM", "hm-ics": "HM&ICS"}
ORDER = list(NAMES)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def rows(root: Path, datasets: list[str], scores: bool) -> list[str]:
    """One row per DATASET/DEFENSE folder (missing figures are '-')."""
    found = []
    for data in datasets:
        folders = sorted((p for p in (root / data).glob("*") if p.is_dir()),
                         key=lambda p: (ORDER.index(p.name) if p.name in ORDER else 99, p.name))
        found += [(data, f.name, _load(f / "evaluate.json"), _load(f / "robustness.json"))
                  for f in folders]
    names = next((list(rb["scores"]) for *_, rb in found if rb), []) if scores else []
    lines = []
    for data, defense, ev, rb in found:
        cells = [data, NAMES.get(defense, defense), f"{ev['recall@1']:.1f}" if ev else "-"]
        cells += [f"{rb['scores'][n]:.3g}" if rb else "-" for n in names]
        cells.append(f"{rb['ers']:.1f} [{rb['ers_ci'][0]:.1f}, {rb['ers_ci'][1]:.1f}]"
                     if rb else "-")
        lines.append(cells)
    head = ["dataset", "defense", "R@1 %", *names, "ERS [95% CI]"]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(c) + " |" for c in lines)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("datasets", nargs="+")
    p.add_argument("--scores", action="store_true", help="add the ten raw scores")
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = p.parse_args()
    text = "\n".join(rows(args.results, args.datasets, args.scores)) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
