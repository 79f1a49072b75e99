"""``advrank attack`` and ``advrank grid``: thin wrappers over the experiments layer."""

from __future__ import annotations

from pathlib import Path

from advrank.cli.options import (
    add_common,
    add_kind_options,
    add_size,
    attack_name,
    emit,
    eps_value,
    integer,
    kind_options,
    listed,
    number,
    positive_int,
    resolve_size,
)
from advrank.core.io import check_writable_dir
from advrank.registry import ATTACKS


def attack_metavar() -> str:
    return "{" + ",".join(ATTACKS.names()) + "}"


def threat_from_args(args):
    from advrank.attacks import LinfThreatModel

    return LinfThreatModel(args.eps, args.step_size, args.steps, args.random_start)


def cmd_attack(args) -> None:
    from advrank.attacks import get_attack
    from advrank.experiments.protocol import run_attack
    from advrank.experiments.target import load_target

    k = resolve_size(args, [args.attack])
    kind = get_attack(args.attack, **kind_options(args))  # options checked before any work
    threat = threat_from_args(args)
    target = load_target(args.checkpoint, args.device, args.data_root, args.download,
                         progress=not args.quiet)
    result = run_attack(target.model, target.gallery, kind, args.eps, k, args.num_attacks,
                        seed=args.seed, batch_size=args.batch_size, threat=threat,
                        progress=not args.quiet)
    s = result.summary()
    name, fig = kind.size_name or "k", kind.headline
    digits = 2 if kind.unit else 4  # percentages, or figures such as a cosine or a distance
    text = (f"{kind.name} eps={args.eps:g} {name}={k}: {fig} {s[f'{fig}_before']:.{digits}f}"
            f"{kind.unit} -> {s[f'{fig}_after']:.{digits}f}{kind.unit} (± "
            f"{s[f'{fig}_after_se']:.{digits}f}, T={s['num_attacks']}, |X|={s['gallery_size']})")
    if "sp_rank_after" in s:
        text += f"; worst C_SP rank {s['sp_rank_before']:.2f}% -> {s['sp_rank_after']:.2f}%"
    if fig != "recall@1" and "recall@1_after" in s:
        text += f"; R@1 {s['recall@1_before']:.1f}% -> {s['recall@1_after']:.1f}%"
    emit(args, {**s, **target.record(args.seed)}, text)


def cmd_grid(args) -> None:
    from advrank.attacks.base import make_kinds
    from advrank.experiments.grid import run_grid
    from advrank.experiments.paper import paper_eps, paper_table_for
    from advrank.experiments.target import load_target

    ks = resolve_size(args, args.attacks)
    make_kinds(args.attacks, kind_options(args))  # options checked before any work
    if args.paper != "auto":
        paper_table_for({}, args.paper)
    check_writable_dir(args.out)
    target = load_target(args.checkpoint, args.device, args.data_root, args.download,
                         progress=not args.quiet)
    eps_values = args.eps_values or paper_eps(target.meta["dataset"])
    paper = paper_table_for(target.meta, args.paper)
    results = run_grid(target.model, target.gallery, args.out, eps_values, ks, args.attacks,
                       args.num_attacks, args.seed, args.batch_size, paper,
                       target.record(args.seed), progress=not args.quiet, **kind_options(args))
    table = (Path(args.out) / "table.md").read_text()
    emit(args, {"out": str(args.out), "cells": list(results["cells"].values())}, table)


def add_threat(p, eps_required: bool = True, eps_default: float | None = None) -> None:
    p.add_argument("--eps", type=eps_value, required=eps_required, default=eps_default,
                   help="L-inf budget in [0, 1] pixel units, e.g. 0.3 or 8/255")
    p.add_argument("--steps", type=integer(0, 100_000), default=None,
                   help="PGD iterations (default: paper, min(max(10, 2 eps / alpha), 30))")
    p.add_argument("--step-size", type=number(0.0, 1.0, low_open=True), default=None,
                   help="PGD step (default: paper, min(max(eps / 10, 1/255), 0.01))")
    p.add_argument("--random-start", action="store_true",
                   help="start PGD at a uniform point of the ball (paper: no)")


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "attack", help="run T attacks of one kind and report normalized ranks",
        formatter_class=formatter,
        description="White-box adversarial ranking attack (L-inf PGD) on a checkpoint's test "
                    "set used as the candidate set X, with the paper's selection rules: CA+/QA+ "
                    "pick Q/C at random, CA-/QA- from the top 1% of the ranking list.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--attack", required=True, type=attack_name, metavar=attack_metavar())
    add_threat(p)
    add_size(p, default=1)
    p.add_argument("--num-attacks", type=positive_int, default=1000,
                   help="T independent attacks")
    p.add_argument("--batch-size", type=integer(1, 1_000_000), default=256,
                   help="attacks per PGD batch (results do not depend on it)")
    add_kind_options(p)
    add_common(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser(
        "grid", help="the paper's full attack grid (Tables 1-4), resumable",
        formatter_class=formatter,
        description="Run every attack x eps x w/m cell and write results.json (after each "
                    "cell, so rerunning resumes), results.csv and table.md.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-attacks", type=positive_int, default=1000, help="T attacks per cell")
    p.add_argument("--eps-values", type=listed(eps_value, "eps values"), default=None,
                   help="comma-separated eps rows (default: the paper's for the dataset)")
    add_size(p, default=[1, 2, 5, 10], multiple=True)
    p.add_argument("--attacks", type=listed(attack_name, "attack names"),
                   default=["CA+", "CA-", "QA+", "QA-"], help="comma-separated attacks")
    p.add_argument("--batch-size", type=integer(1, 1_000_000), default=256,
                   help="attacks per PGD batch (results do not depend on it)")
    add_kind_options(p)
    p.add_argument("--paper", default="auto",
                   help="paper table to print beside ours: auto, none, mnist, mnist-defended, "
                        "fashion, fashion-defended, sop")
    add_common(p)
    p.set_defaults(func=cmd_grid)
