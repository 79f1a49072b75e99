#!/usr/bin/env python
"""Print a Markdown comparison of several audits (e.g. a vanilla and a defended model):
retrieval quality, then the mean rank after each attack at each eps, one column per audit.

    python scripts/compare_audits.py vanilla=results/audit-mnist/vanilla \\
        est=results/audit-mnist/est > results/audit-mnist/README.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(spec: str) -> tuple[str, dict]:
    name, sep, folder = spec.partition("=")
    if not sep:
        name, folder = Path(spec).name, spec
    return name, json.loads((Path(folder) / "report.json").read_text())


def table(reports: list[tuple[str, dict]]) -> str:
    names = [n for n, _ in reports]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label in (("recall@1", "Recall@1 (%)"), ("map", "mAP (%)")):
        lines.append(f"| {label} | " + " | ".join(f"{r['summary'][key]:.1f}"
                                                  for _, r in reports) + " |")
    first = reports[0][1]["summary"]["attacks"]
    for row in first:
        cells = []
        for _, r in reports:
            match = [x for x in r["summary"]["attacks"]
                     if x["attack"] == row["attack"] and abs(x["eps"] - row["eps"]) < 1e-12]
            cells.append(f"{match[0]['rank_before']:.1f} → {match[0]['rank_after']:.1f}"
                         if match else "–")
        lines.append(f"| {row['attack']} ε={row['eps']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("audits", nargs="+", help="NAME=FOLDER (a folder holding report.json)")
    args = p.parse_args()
    reports = [load(spec) for spec in args.audits]
    cfg = reports[0][1]["config"]
    print(f"Mean normalized rank (% of |X| = {reports[0][1]['summary']['gallery_size']:,}) of "
          f"the attacked items before → after each attack, T = {cfg['num_attacks']} attacks "
          f"per cell, w = m = {cfg['k']}, seed {cfg['seed']} (CA+/QA+: lower = attack "
          "succeeds; CA-/QA-/ES: higher).\n")
    print(table(reports))
    print()
    for name, r in reports:
        c = r["config"]
        print(f"- {name}: `{c['command']}` (commit {c['commit']}, {c['hardware']}, "
              f"model sha256 {c['model_sha'][:12]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
