"""The audit's printed time estimate against the time it took (issue 36), on two audits:

* ``digits``: the deployed audit of README's digits model (trained here as README's quick
  start trains it, 10 epochs, seed 0): ``advrank audit --checkpoint digits.pt --eps 0.1,0.3
  --num-attacks 100 --pipeline png --index hnsw --query-budget 500``;
* ``photos``: a ResNet-18 (timm, random weights seeded by advrank: no --weights, so the
  figures test the tooling, not a trained model) on 60 generated pictures (3 classes of 20,
  256 x 256 JPEGs drawn from a seeded generator, :func:`make_pictures`), ``--num-attacks 20``.

    nice -n 10 python scripts/audit_estimates.py --out results/audit-estimates

Each audit starts from an empty folder (under ``--work``, default runs/: the checkpoint,
pictures and reports are not results) and runs as a subprocess; the script records the
estimate it printed (``audit: estimated time about ...``), the estimate and the cells' time
from its report.json (``summary.estimate``), the command's whole wall time (loading
included) and the machine's load average before and after. Writes OUT/NAME.json per audit,
OUT/results.json (the script's command, commit, hardware, date) and OUT/results.md.
``--smoke`` runs both at toy sizes (the test of this script).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_results import ADVRANK, publish  # noqa: E402

FULL = {"epochs": "10", "digits": ["--eps", "0.1,0.3", "--num-attacks", "100", "--pipeline",
                                   "png", "--index", "hnsw", "--query-budget", "500"],
        "pictures": 20, "size": 256, "photos": ["--num-attacks", "20"],
        "model": "timm:resnet18"}
SMOKE = {"epochs": "1", "digits": ["--eps", "0.3", "--num-attacks", "6", "--attacks",
                                   "CA+,QA+", "--pipeline", "png", "--index", "hnsw",
                                   "--query-budget", "10", "--steps", "2", "--examples", "0"],
         "pictures": 4, "size": 48, "photos": ["--num-attacks", "4", "--attacks", "CA+,ES",
                                               "--steps", "1", "--examples", "0",
                                               "--input-size", "32"],
         "model": "timm:test_vit"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/audit-estimates")
    p.add_argument("--work", default="runs/audit-estimates",
                   help="where the checkpoint, pictures and audit folders go (not results/)")
    p.add_argument("--runs", default="digits,photos", help="which audits: digits, photos")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="toy sizes (the script's test)")
    return p.parse_args(argv)


def make_pictures(root: Path, per_class: int, size: int, seed: int = 0) -> Path:
    """``root/CLASS/NNN.jpg``: ``per_class`` pictures in each of 3 classes (a colour and a
    shape per class, random sizes and noise), the same files for the same seed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mid = size / 2
    for c, name in enumerate(("circles", "stripes", "squares")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.zeros((size, size, 3)) + rng.uniform(0, 0.3, 3)
            img[..., c] += 0.45
            if c == 0:
                mask = (yy - mid) ** 2 + (xx - mid) ** 2 < rng.uniform(0.05, 0.2) * size ** 2
            elif c == 1:
                mask = (xx // rng.integers(2, 12)) % 2 == 0
            else:
                h, w = rng.integers(size // 8, size // 3, 2)
                mask = (abs(yy - mid) < h) & (abs(xx - mid) < w)
            img = np.clip(img + 0.4 * mask[..., None] + rng.normal(0, 0.04, img.shape), 0, 1)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / name / f"{i:03d}.jpg",
                                                               quality=90)
    return root


def timed_audit(name: str, argv: list[str], out: Path) -> dict:
    """Run ``advrank audit ARGV --out OUT`` from an empty folder; the printed estimate, the
    report's estimate and cells' time, and the command's wall time."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    command = [*ADVRANK, "audit", *argv, "--out", str(out)]
    print("+", " ".join(map(str, command)), flush=True)
    load = os.getloadavg()
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{name}: advrank audit failed:\n{done.stderr[-3000:]}")
    printed = re.findall(r"^audit: estimated time about .*$", done.stderr, flags=re.M)
    estimate = json.loads((out / "report.json").read_text())["summary"]["estimate"]
    ratio = estimate["actual_seconds"] / max(estimate["estimated_seconds"], 1e-9)
    return {"audit": name, "command": "advrank " + " ".join(map(str, command[3:])),
            "printed": printed[0] if printed else None,
            "estimated_seconds": estimate["estimated_seconds"],
            "actual_seconds": estimate["actual_seconds"], "probe_seconds":
            estimate["probe_seconds"], "wall_seconds": wall, "actual_over_estimate": ratio,
            "within_1.5x": 1 / 1.5 <= ratio <= 1.5, "load_before": load,
            "load_after": os.getloadavg(), "cells": estimate["cells"]}


def digits_argv(work: Path, sizes: dict) -> list[str]:
    """README's digits model (trained once, as the quick start trains it)."""
    ckpt = work / "digits.pt"
    if not ckpt.is_file():
        subprocess.run([*ADVRANK, "train", "--dataset", "digits", "--arch", "c2f1", "--epochs",
                        sizes["epochs"], "--out", str(ckpt), "--quiet"], check=True)
    return ["--checkpoint", str(ckpt), *sizes["digits"]]


def photos_argv(work: Path, sizes: dict) -> list[str]:
    photos = make_pictures(work / "photos", sizes["pictures"], sizes["size"])
    return ["--model", sizes["model"], "--data", f"imagefolder:{photos}", *sizes["photos"]]


def markdown(rows: list[dict]) -> str:
    lines = ["# The audit's printed estimate vs the time it took", "",
             "| audit | printed estimate | estimated (s) | actual (s) | actual / estimated | "
             "within 1.5x | whole command incl. loading (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['audit']} | {r['printed'] or '-'} | {r['estimated_seconds']:.0f} | "
                     f"{r['actual_seconds']:.0f} | {r['actual_over_estimate']:.2f} | "
                     f"{'yes' if r['within_1.5x'] else 'no'} | {r['wall_seconds']:.0f} |")
    lines += ["", "Commands:", *[f"- `{r['command']}`" for r in rows], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from advrank.core.runtime import set_command

    set_command(None)
    out, work = Path(args.out), Path(args.work)
    for folder in (out, work):
        folder.mkdir(parents=True, exist_ok=True)
    sizes = SMOKE if args.smoke else FULL
    rows = []
    for name in [r.strip() for r in args.runs.split(",") if r.strip()]:
        make = {"digits": digits_argv, "photos": photos_argv}[name]
        row = timed_audit(name, [*make(work, sizes), "--device", args.device,
                                 "--seed", str(args.seed)], work / f"{name}-audit")
        (out / f"{name}.json").write_text(json.dumps(row, indent=1))
        rows.append(row)
    publish(args, markdown(rows), audits=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
