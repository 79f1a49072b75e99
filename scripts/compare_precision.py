"""Compare two grids of the same model, seed and T run in two precisions (e.g. fp32 and bf16):
does every cell agree within 2 standard errors?

Usage: python scripts/compare_precision.py REFERENCE_DIR OTHER_DIR [OUT_DIR]

Reads each folder's results.json (written by ``advrank grid``), and for every cell in both
prints the mean rank after attack, the difference, and the difference in units of the
cell's standard error (the larger of the two runs'); writes compare.md and compare.json to
OUT_DIR (default OTHER_DIR). Exit status 1 if a cell differs by more than 2 SE.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

IDENTITY = ("num_attacks", "seed", "gallery_size", "checkpoint_sha")


def load(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def compare(ref: dict, other: dict) -> list[dict]:
    """One row per cell present in both grids."""
    for key in IDENTITY:
        if ref["config"].get(key) != other["config"].get(key):
            raise SystemExit(f"the grids differ in {key}: {ref['config'].get(key)!r} vs "
                             f"{other['config'].get(key)!r}")
    rows = []
    for key in sorted(set(ref["cells"]) & set(other["cells"])):
        a, b = ref["cells"][key], other["cells"][key]
        se = max(a["rank_after_se"], b["rank_after_se"])
        diff = b["rank_after"] - a["rank_after"]
        rows.append({"cell": key, "reference": a["rank_after"], "other": b["rank_after"],
                     "se": se, "diff": diff, "diff_in_se": abs(diff) / se if se else 0.0,
                     "within_2se": abs(diff) <= 2 * se,
                     "seconds_reference": a.get("seconds"), "seconds_other": b.get("seconds")})
    return rows


def markdown(rows: list[dict], ref: dict, other: dict) -> str:
    p_ref = ref["config"].get("precision", "fp32")
    p_other = other["config"].get("precision", "fp32")
    lines = [f"Rank after attack (%), {p_other} vs {p_ref}: T = {ref['config']['num_attacks']}, "
             f"seed {ref['config']['seed']}, checkpoint {ref['config'].get('checkpoint_sha')}, "
             f"{other['config'].get('hardware')}",
             "",
             f"| cell | {p_ref} | {p_other} | difference | SE | difference / SE | within 2 SE |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        attack, eps, k = r["cell"].split("|")
        lines.append(f"| {attack} eps={eps} k={k} | {r['reference']:.2f} | {r['other']:.2f} | "
                     f"{r['diff']:+.2f} | {r['se']:.2f} | {r['diff_in_se']:.2f} | "
                     f"{'yes' if r['within_2se'] else '**no**'} |")
    agree = sum(r["within_2se"] for r in rows)
    lines += ["", f"{agree} of {len(rows)} cells within 2 standard errors."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    ref_dir, other_dir = Path(argv[0]), Path(argv[1])
    out = Path(argv[2]) if len(argv) == 3 else other_dir
    ref, other = load(ref_dir), load(other_dir)
    rows = compare(ref, other)
    text = markdown(rows, ref, other)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(text)
    (out / "compare.json").write_text(json.dumps(
        {"reference": str(ref_dir), "other": str(other_dir), "rows": rows}, indent=2) + "\n")
    print(text)
    return 0 if all(r["within_2se"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
