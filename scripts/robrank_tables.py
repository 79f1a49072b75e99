#!/usr/bin/env python3
"""Tables of the robrank suite from the files ``scripts/robrank.sh`` wrote.

    python scripts/robrank_tables.py ers RESULTS     # RESULTS/ers-{fashion,mnist}/table.md
    python scripts/robrank_tables.py study RESULTS   # RESULTS/loss-metric-mnist/table.md

``ers``: our vanilla / EST / ACT C2F1 (cosine) rows in robrank's dmltab layout, beside
robrank's published Fashion-MNIST rows (ERS computed from them by robrank's formula).
``study``: the ECCV paper's loss/metric study on MNIST (§4, "further experiments").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from advrank.experiments.robustness import ROBRANK_FASHION, ers, raw_scores
from advrank.models.checkpoint import load_checkpoint
from advrank.reports.robustness import comparison_markdown

#: (our label, checkpoint name, robrank's row of the same defense)
ERS_MODELS = {
    "fashion": [("vanilla", "fashion-c2f1", "rc2f2:ptripletC"),
                ("EST", "fashion-c2f1-est", "rc2f2d:ptripletC"),
                ("ACT", "fashion-c2f1-act", "rc2f2p:ptripletC")],
    "mnist": [("vanilla", "mnist-c2f1", None), ("EST", "mnist-c2f1-est", None),
              ("ACT", "mnist-c2f1-act", None)],
}
STUDY = [("ct", "cosine", "triplet"), ("et", "Euclidean", "triplet"),
         ("cc", "cosine", "contrastive"), ("ec", "Euclidean", "contrastive")]
ATTACKS = ("CA+", "CA-", "QA+", "QA-")
EPS = (0.1, 0.3)


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _recipe(checkpoint: str | None) -> str:
    """How a checkpoint was trained, from its own metadata."""
    if not checkpoint or not Path(checkpoint).exists():
        return "checkpoint not found"
    meta = load_checkpoint(checkpoint)["meta"]
    text = (f"{meta.get('epochs_done')} epochs, batch {meta.get('batch_size')}, lr "
            f"{meta.get('lr')}, embedding {meta.get('embed_dim')}, {meta.get('loss')} margin "
            f"{meta.get('margin')}")
    cfg = meta.get("defense_config")
    if cfg:
        text += (f"; defense {cfg['defense']}: eps {cfg['eps']:.4f}, {cfg['steps']} PGD steps "
                 f"of {cfg['step_size']:.4f}, random start {cfg['random_start']}")
    if meta.get("init"):
        text += f"; fine-tuned from {meta['init']}"
    return text


def strict_row(label: str, data: dict, replaced: dict) -> dict | None:
    """ERS with the ES and GTM cells measured with advrank's default kinds (random-start ES,
    GTM towards the nearest member of another class) in place of robrank's variants."""
    cells = {**data["cells"], **replaced.get("cells", {})}
    if not all(a in cells for a in ("ES", "GTM")):
        return None
    raw = raw_scores(cells)
    return {"label": label, "scores": raw, "ers": ers(raw)[0]}


def ers_table(results: Path, dataset: str) -> str:
    folder = results / f"ers-{dataset}"
    rows, notes, strict = [], [], []
    for label, name, ref in ERS_MODELS[dataset]:
        data = _read(folder / name / "results.json")
        if data is not None and "summary" in data:
            s, cfg = data["summary"], data["config"]
            ev = _read(folder / f"{name}.evaluate.json") or {}
            rows.append({"label": f"ours: {label}", **{k: ev.get(k) for k in
                         ("recall@1", "recall@2", "map", "nmi")},
                         "scores": s["scores"], "ers": s["ers"], "ers_ci": s["ers_ci"]})
            replaced = _read(folder / name / "replaced-cells.json")
            row = strict_row(f"ours: {label}", data, replaced) if replaced else None
            if row:
                strict.append(row)
            notes.append(f"- ours {label}: `{cfg['checkpoint']}` ({_recipe(cfg['checkpoint'])})"
                         f"; T = {cfg['num_attacks']} per attack, `{cfg['command']}`, commit "
                         f"{cfg['commit']}, {cfg['hardware']}.")
        if ref:
            pub = ROBRANK_FASHION[ref]
            rows.append({"label": f"robrank {ref}", **pub, "ers": ers(pub["scores"])[0]})
    title = (f"{dataset}: C2F1, cosine, triplet; rob28 (eps 77/255, alpha 3/255, 32 PGD "
             "steps); R@1, R@2, mAP, NMI in %; ERS with its 95% bootstrap interval")
    lines = [f"# ERS — {dataset}", "", comparison_markdown(rows, title), *notes, ""]
    if strict:
        lines += ["With advrank's default ES (random start) and GTM (pulled towards the nearest "
                  "member of another class) instead of robrank's variants (ES from the clean "
                  "image, GTM towards robrank's target index); the other eight scores as above:",
                  "", "| model | ES:D | ES:R | GTM | ERS |", "|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['scores']['ES:D']:.3f} | {r['scores']['ES:R']:.1f} | "
                  f"{r['scores']['GTM']:.1f} | {r['ers']:.1f} |" for r in strict]
        lines.append("")
    if dataset == "fashion":
        lines += ["robrank rows: `doc/dmltab-fashion.txt` of cdluminate/robrank (its rc2f2 "
                  "model, 8 epochs from scratch; d = EST, p = ACT, both with 32 PGD steps of "
                  "3/255 at eps 77/255); their ERS computed here by robrank's formula "
                  "(`tools/pjswipe.py`).", ""]
    else:
        lines += ["robrank publishes no MNIST rows (`doc/dmltab-mnist.txt` is empty: \"MNIST "
                  "dataset is too easy\").", ""]
    return "\n".join(lines)


def _displacement(cell: dict) -> float:
    """How far the attack moved the rank, in the attack's direction (percentage points)."""
    before, after = cell["rank_before"], cell["rank_after"]
    return before - after if cell["attack"].endswith("+") else after - before


def study_table(results: Path) -> str:
    folder = results / "loss-metric-mnist"
    head = (["model", "epochs", "R@1"] + [f"{a} ε={e:g}" for a in ATTACKS for e in EPS]
            + ["mean shift"])
    lines = ["# Loss / metric study on MNIST (ECCV 2020, §4 \"further experiments\")", "",
             "C2F1 on MNIST; cells: mean normalized rank after attack (%), w = m = 1, T "
             "attacks per cell (paper's selection rules, alpha/eta and SP term); \"mean shift\":"
             " the mean over the 8 cells of how far the attack moved the rank in its own "
             "direction (percentage points; lower = more robust).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shifts: dict[str, float] = {}
    notes: list[str] = []
    for name, metric, loss in STUDY:
        for suffix, defense in (("", "vanilla"), ("-est", "EST")):
            data = _read(folder / f"{name}{suffix}" / "results.json")
            ev = _read(folder / f"{name}{suffix}" / "evaluate.json") or {}
            trained = _read(folder / f"{name}{suffix}" / "train.json") or {}
            if data is None:
                continue
            cells = {(c["attack"], round(c["eps"], 6)): c for c in data["cells"].values()}
            row = [f"{metric} / {loss} / {defense}", str(trained.get("epochs", "?")),
                   f"{ev.get('recall@1', float('nan')):.2f}"]
            found = [cells.get((a, e)) for a in ATTACKS for e in EPS]
            row += ["…" if c is None else f"{c['rank_after']:.1f}" for c in found]
            done = [c for c in found if c is not None]
            if len(done) == len(found):
                shifts[f"{name}{suffix}"] = sum(map(_displacement, done)) / len(done)
            row.append(f"{shifts[f'{name}{suffix}']:.1f}" if f"{name}{suffix}" in shifts
                       else "…")
            lines.append("| " + " | ".join(row) + " |")
            cfg = data["config"]
            notes.append(f"- {name}{suffix}: trained by `{trained.get('command')}`; attacked by "
                         f"`{cfg.get('command')}` (T = {cfg['num_attacks']}, seed "
                         f"{cfg['seed']}, commit {cfg.get('commit')}, {cfg.get('hardware')})")
    return "\n".join(lines + ["", *claims(shifts), "", *notes, ""])


def claims(shifts: dict[str, float]) -> list[str]:
    """The paper's three summary claims, checked against the mean shifts measured."""
    if len(shifts) < 8:
        return ["(claims are checked once all eight models are measured)"]
    vanilla = {n: shifts[n] for n, _, _ in STUDY}
    gain = {n: 1 - shifts[f"{n}-est"] / shifts[n] for n, _, _ in STUDY}  # EST's relative cut
    out = ["Mean shift per vanilla model: " + ", ".join(f"{n} {v:.1f}" for n, v in
                                                        vanilla.items()),
           "EST's relative reduction of the mean shift: " + ", ".join(
               f"{n} {100 * g:.0f}%" for n, g in gain.items())]
    out.append(f"1. all vanilla models vulnerable: min mean shift {min(vanilla.values()):.1f} "
               "points")
    out.append(f"2a. contrastive more robust than triplet (vanilla): cosine "
               f"{vanilla['cc']:.1f} vs {vanilla['ct']:.1f}, Euclidean {vanilla['ec']:.1f} vs "
               f"{vanilla['et']:.1f}")
    out.append("2b. EST improves every model: " + ", ".join(
        f"{n} {'yes' if g > 0 else 'no'}" for n, g in gain.items()))
    out.append(f"3. Euclidean harder to defend than cosine: EST cuts Euclidean by "
               f"{100 * gain['et']:.0f}% (triplet) / {100 * gain['ec']:.0f}% (contrastive), "
               f"cosine by {100 * gain['ct']:.0f}% / {100 * gain['cc']:.0f}%")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("ers", "study"):
        print(__doc__, file=sys.stderr)
        return 2
    results = Path(argv[1])
    if argv[0] == "ers":
        for dataset in ERS_MODELS:
            if (results / f"ers-{dataset}").exists():
                (results / f"ers-{dataset}" / "table.md").write_text(ers_table(results, dataset))
    else:
        (results / "loss-metric-mnist" / "table.md").write_text(study_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
