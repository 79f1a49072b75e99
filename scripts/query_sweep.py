"""The query-only optimisers' sweep (issue 32): QA+, QA-, ES and ORDER through the local
oracle's top-k ids at several eps, for each optimiser configuration, at 100 / 300 / 1,000
queries, on one or more checkpoints; the optimisers' defaults are chosen from its tables.

    python scripts/query_sweep.py --checkpoint runs/mnist-c2f1.pt --checkpoint \\
        runs/fashion-c2f1.pt --out results/query-sweep --num-attacks 30

Each cell (checkpoint, kind, eps, configuration) is one ``run_query_attack`` with query
checkpoints at the budgets (a configuration whose schedule follows the budget, as the old
``random`` does, is run once per budget instead), on one §4 selection per kind and seed, the
same for every configuration and eps. QA+ and QA- take one candidate (m = 1), ORDER k = 5; QA-
draws its candidate from the visible list (``top_fraction`` = K / |X|), since a candidate
already out of sight cannot be pushed further by what the attacker sees. Every finished cell
is appended to OUT/cells.jsonl, so an interrupted sweep resumes where it stopped. At the end
(or with ``--tables``) OUT/results.json (command, seed, commit, hardware, date; every cell)
and OUT/results.md (one table per checkpoint and kind: each configuration's headline figure
per eps and budget; and each configuration's mean rank over all cells) are written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

KINDS = {"QA+": 1, "QA-": 1, "ES": 1, "ORDER": 5}  # size (m or k) per kind


def configurations() -> dict[str, tuple[str, dict, bool]]:
    """name -> (optimiser, options, prefix-consistent): the defaults before the sweep (their
    published behaviour), today's defaults, and the candidates the defaults were chosen from
    ("floors 8lv/2lv": sigma and lr at least 8 and 2 8-bit levels)."""
    from advrank.attacks.query.nes import NES
    from advrank.attacks.query.spsa import SPSA
    from advrank.attacks.query.square import Square

    nes = dict(NES.legacy, stop=True)
    return {
        "random (old CLI default)": ("random", {}, False),
        "nes (old default)": ("nes", dict(NES.legacy), True),
        "spsa (old default)": ("spsa", dict(SPSA.legacy), True),
        "nes (default)": ("nes", {}, True),
        "spsa (default)": ("spsa", {}, True),
        "square (default)": ("square", {}, True),
        # candidates
        "nes floors 8lv/2lv m=.9": ("nes", dict(
            nes, sigma_floor=8, lr_floor=2, momentum=0.9), True),
        "nes sigma=eps floor 2lv m=.5": ("nes", dict(
            nes, sigma_scale=1.0, sigma_floor=2, momentum=0.5), True),
        "square p=0.05": ("square", {"p_init": 0.05}, True),
        "square p=0.3": ("square", {"p_init": 0.3}, True),
        "square (paper)": ("square", dict(Square.paper), True),
    }


#: the configurations of the main grid (``--configs grid``)
GRID = ("random (old CLI default)", "nes (old default)", "nes (default)", "spsa (default)",
        "square (default)")


def eps_value(text: str) -> float:
    """``0.3`` or ``4/255``."""
    return float(Fraction(text.strip()))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=None,
                   help="a searched model (repeat for several; default runs/mnist-c2f1.pt)")
    p.add_argument("--out", default="results/query-sweep")
    p.add_argument("--kinds", default="ORDER,QA+,QA-,ES")
    p.add_argument("--eps", default="2/255,4/255,8/255,0.3")
    p.add_argument("--budgets", default="100,300,1000")
    p.add_argument("--configs", default="grid",
                   help="comma-separated names of configurations(), 'grid' (old and new "
                        "defaults) or 'all'")
    p.add_argument("--num-attacks", type=int, default=30)
    p.add_argument("--feedback", default="topk:10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--tables", action="store_true",
                   help="only rebuild results.json/.md from OUT/cells.jsonl (the sweep's own "
                        "record, command and commit are kept)")
    p.add_argument("--note", default=None, help="a note kept in results.json")
    args = p.parse_args(argv)
    args.checkpoint = args.checkpoint or ["runs/mnist-c2f1.pt"]
    known = configurations()
    names = (list(known) if args.configs == "all" else list(GRID) if args.configs == "grid"
             else [c.strip() for c in args.configs.split(",")])
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; known: {list(known)}")
    args.config_names = names
    if not {k.strip() for k in args.kinds.split(",")} <= set(KINDS):
        p.error(f"--kinds takes {', '.join(KINDS)}, got {args.kinds!r}")
    return args


def cell_key(checkpoint: str, kind: str, eps: str, config: str) -> str:
    return f"{Path(checkpoint).name}|{kind}|{eps}|{config}"


def done_cells(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    cells = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {c["key"]: c for c in cells}


def kind_for(name: str, gallery_size: int, feedback):
    """The kind as the sweep runs it (QA-: its candidate within the visible list)."""
    from advrank.attacks import get_attack

    if name == "QA-":
        return get_attack(name, top_fraction=feedback.depth(gallery_size) / (gallery_size - 1))
    return get_attack(name)


def figures_of(kind, figures: dict) -> dict:
    """The headline figure (and its se) of a result or checkpoint, plus ES's R(q~, q)."""
    h = kind.headline
    # since the endpoint merge (8e44fe7) a query-only run reads its figures from the oracle's
    # answers (top-k forms: overlap@k, success) and puts the local copy's exact figures beside
    # them as "local:..."; the headline stays the local copy's, as in the cells run before it
    src = "" if f"{h}_after" in figures else "local:"
    out = {"headline": h, "value": figures[f"{src}{h}_after"],
           "se": figures[f"{src}{h}_after_se"], "before": figures[f"{src}{h}_before"]}
    if src:
        out["read_from"] = "local copy (local:)"
        out["topk"] = {f: figures[f] for f in figures
                       if not f.startswith("local:") and f.endswith(("_before", "_after"))}
    if kind.name == "ES":
        out["own_rank"] = figures[f"{src}rank_after"]
    if kind.name == "ORDER":
        out["src"] = figures["src_after"]
    return out


def run_cell(args, target, kind, sel, eps: str, config: str) -> dict:
    """One (kind, eps, configuration) of one checkpoint: figures per budget."""
    from advrank.attacks.query import get_optimizer
    from advrank.experiments.query import run_query_attack
    from advrank.oracles import make_oracle

    name, options, prefix = configurations()[config]
    described = get_optimizer(name, **options).describe()  # every option, defaults included
    budgets = sorted(int(b) for b in args.budgets.split(","))
    rows, t0, sent = {}, time.time(), 0
    runs = [(budgets[-1], budgets)] if prefix else [(b, ()) for b in budgets]
    for budget, checkpoints in runs:
        oracle = make_oracle("local", target, args.feedback)
        r = run_query_attack(target, kind, oracle, get_optimizer(name, **options),
                             eps_value(eps), KINDS[kind.name], len(sel), budget,
                             seed=args.seed, batch_size=args.batch_size, selection=sel,
                             progress=False, checkpoints=checkpoints)
        sent += r.extra["queries_sent"]  # the attacks' own (not the evaluation's)
        points = r.extra["checkpoints"] if checkpoints else {budget: {
            **r.figures, "queries_used": r.extra["queries_used"]}}
        for b, figures in points.items():
            rows[str(b)] = {**figures_of(kind, figures), "queries_used": figures["queries_used"]}
        rows[str(budget)].update(goal_reached=r.extra["goal_reached"],
                                 queries_saved=r.extra["queries_saved"])
    return {"optimizer": name, "options": described, "budgets": rows,
            "seconds": time.time() - t0, "queries_sent": sent}


def sweep(args) -> None:
    """Run every cell not yet in OUT/cells.jsonl, appending each as it finishes."""
    import shlex

    from advrank.core.runtime import resolve_device, run_record
    from advrank.experiments.target import load_target
    from advrank.oracles import parse_feedback

    run = {**run_record(resolve_device(args.device), args.seed),
           "command": "python " + shlex.join(sys.argv)}  # each cell's own provenance
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cells.jsonl"
    done = done_cells(path)
    feedback = parse_feedback(args.feedback)
    for checkpoint in args.checkpoint:
        target = load_target(checkpoint, args.device)
        n = len(target.gallery)
        for kind_name in (k.strip() for k in args.kinds.split(",")):
            kind = kind_for(kind_name, n, feedback)
            sel = kind.select(target.gallery, KINDS[kind_name], args.num_attacks, args.seed)
            for eps in (e.strip() for e in args.eps.split(",")):
                for config in args.config_names:
                    key = cell_key(checkpoint, kind_name, eps, config)
                    if key in done:
                        continue
                    cell = {"key": key, "checkpoint": checkpoint, "kind": kind_name,
                            "eps": eps, "config": config, "num_attacks": len(sel),
                            **run_cell(args, target, kind, sel, eps, config), "run": run}
                    with path.open("a") as f:
                        f.write(json.dumps(cell) + "\n")
                    b = cell["budgets"][args.budgets.split(",")[-1].strip()]
                    print(f"{key}: {b['headline']} {b['value']:.3f} "
                          f"({cell['seconds']:.0f} s)", file=sys.stderr, flush=True)


def mean_ranks(cells: list[dict], directions: dict[str, str]) -> dict[str, float]:
    """Each configuration's mean rank (1 = best) over the (checkpoint, kind, eps, budget)
    columns where every configuration swept has a figure."""
    groups: dict[tuple, dict[str, float]] = {}
    for c in cells:
        for b, row in c["budgets"].items():
            groups.setdefault((c["checkpoint"], c["kind"], c["eps"], b), {})[c["config"]] = \
                row["value"] * (1 if directions[c["kind"]] == "up" else -1)
    configs = {c["config"] for c in cells}
    ranks: dict[str, list[float]] = {name: [] for name in configs}
    for values in groups.values():
        if set(values) != configs:
            continue
        for name, v in values.items():
            ranks[name].append(1 + sum(other > v for other in values.values()))
    return {name: sum(r) / len(r) for name, r in ranks.items() if r}


def markdown(cells: list[dict], args) -> str:
    from advrank.attacks import get_attack

    directions = {k: get_attack(k).direction for k in KINDS}
    budgets = [b.strip() for b in args.budgets.split(",")]
    lines = [f"# Query-only optimiser sweep ({args.feedback} feedback, local oracle, T = "
             f"{args.num_attacks}, seed {args.seed})", "",
             "Each figure: the kind's headline after the attack (mean over T), at 100 / 300 / "
             "1,000 queries; ORDER tau (up), QA+ rank % of C (down), QA- rank % of C (up), "
             "ES shift (up). Bold: the best of the column.", ""]
    by = {(c["checkpoint"], c["kind"]): [] for c in cells}
    for c in cells:
        by[(c["checkpoint"], c["kind"])].append(c)
    for (checkpoint, kind), group in by.items():
        eps_list = list(dict.fromkeys(c["eps"] for c in group))
        lines += [f"## {Path(checkpoint).name}, {kind}", "",
                  "| configuration | " + " | ".join(eps_list) + " |",
                  "|---|" + "---|" * len(eps_list)]
        best = {}
        for e in eps_list:
            for b in budgets:
                vals = [c["budgets"][b]["value"] for c in group if c["eps"] == e]
                best[(e, b)] = (max if directions[kind] == "up" else min)(vals)
        for config in dict.fromkeys(c["config"] for c in group):
            row = []
            for e in eps_list:
                c = next((c for c in group if c["eps"] == e and c["config"] == config), None)
                row.append(" / ".join(_fmt(c["budgets"][b]["value"], best[(e, b)])
                                      for b in budgets) if c else "-")
            lines.append(f"| {config.replace('|', '/')} | " + " | ".join(row) + " |")
        lines.append("")
    lines += early_stop_lines(cells, budgets[-1])
    for old in ("random (old CLI default)", "nes (old default)"):
        lines += verdict_lines(cells, "square (default)", old, directions, budgets)
    ranks = mean_ranks(cells, directions)
    lines += ["## Mean rank over every column (1 = best)", "", "| configuration | mean rank |",
              "|---|---|"]
    lines += [f"| {n} | {r:.2f} |" for n, r in sorted(ranks.items(), key=lambda x: x[1])]
    return "\n".join(lines) + "\n"


def early_stop_lines(cells: list[dict], budget: str) -> list[str]:
    """Per configuration: the share of attacks that met their goal and the queries saved per
    attack, means over its cells at ``budget``."""
    lines = [f"## Early stop at {budget} queries (mean over the cells)", "",
             "| configuration | goal met | queries saved per attack |", "|---|---|---|"]
    for config in dict.fromkeys(c["config"] for c in cells):
        rows = [c["budgets"][budget] for c in cells if c["config"] == config]
        met = sum(r.get("goal_reached", 0.0) for r in rows) / len(rows)
        saved = sum(r.get("queries_saved", 0.0) for r in rows) / len(rows)
        lines.append(f"| {config.replace('|', '/')} | {100 * met:.0f}% | {saved:.0f} |")
    return lines + [""]


def verdict_lines(cells: list[dict], new: str, old: str, directions: dict,
                  budgets: list[str]) -> list[str]:
    """``new`` against ``old`` in every column both have: better, hold (the difference within
    two standard errors of it) or worse."""
    by = {(c["checkpoint"], c["kind"], c["eps"], c["config"]): c for c in cells}
    lines = [f"## {new} against {old}", "", "| checkpoint | kind | eps | " +
             " | ".join(f"{b} queries" for b in budgets) + " |",
             "|---|---|---|" + "---|" * len(budgets)]
    counts = {"better": 0, "hold": 0, "worse": 0}
    for (ckpt, kind, eps, config), c in by.items():
        other = by.get((ckpt, kind, eps, old))
        if config != new or other is None:
            continue
        cols = []
        for b in budgets:
            a, o = c["budgets"][b], other["budgets"][b]
            diff = (a["value"] - o["value"]) * (1 if directions[kind] == "up" else -1)
            se = (a["se"] ** 2 + o["se"] ** 2) ** 0.5
            word = "better" if diff > 2 * se else "worse" if diff < -2 * se else "hold"
            counts[word] += 1
            cols.append(f"{word} ({diff:+.3g})")
        lines.append(f"| {Path(ckpt).name} | {kind} | {eps} | " + " | ".join(cols) + " |")
    return lines + ["", ", ".join(f"{k}: {v}" for k, v in counts.items()) +
                    " (the difference in the kind's direction; hold: within 2 standard "
                    "errors, the two runs' errors pooled)", ""]


def _fmt(value: float, best: float) -> str:
    text = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return f"**{text}**" if value == best else text


def described(config: str) -> dict:
    """Every option of a configuration's optimiser (its defaults included)."""
    from advrank.attacks.query import get_optimizer

    name, options, _ = configurations()[config]
    return get_optimizer(name, **options).describe()


def main(argv=None) -> int:
    args = parse_args(argv)
    from script_results import publish

    t0, out = time.time(), Path(args.out)
    earlier = json.loads((out / "results.json").read_text()) if args.tables and (
        out / "results.json").exists() else None
    if not args.tables:
        sweep(args)
    cells = list(done_cells(out / "cells.jsonl").values())
    record = publish(args, markdown(cells, args), cells=cells, wall_seconds=time.time() - t0,
                     configurations={n: described(n) for n in args.config_names},
                     notes=[args.note] if args.note else [])
    if earlier is not None:  # the sweep's provenance, not the table rebuild's
        keep = ("command", "seed", "commit", "hardware", "date", "wall_seconds")
        record.update({k: earlier[k] for k in keep if k in earlier},
                      tables_command=record["command"],
                      notes=earlier.get("notes", []) + record["notes"])
        (out / "results.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
