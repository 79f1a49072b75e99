"""``advrank attack`` and ``advrank grid``: thin wrappers over the experiments layer."""

from __future__ import annotations

from pathlib import Path

from advrank.cli.options import (
    add_common,
    add_execution,
    add_index,
    add_kind_options,
    add_pipeline,
    add_size,
    add_target_options,
    attack_name,
    emit,
    eps_value,
    index_from_args,
    integer,
    kind_options,
    listed,
    load_target_from_args,
    number,
    path_value,
    policy_from_args,
    positive_int,
    resolve_size,
    target_spec,
    upload_threat,
)
from advrank.core.io import check_writable_dir
from advrank.registry import ATTACKS
from advrank.reports.tables import format_attack


def attack_metavar() -> str:
    return "{" + ",".join(ATTACKS.names()) + "}"


def threat_from_args(args):
    return upload_threat(args, args.eps)


def cmd_attack(args) -> None:
    from advrank.attacks import get_attack
    from advrank.experiments.protocol import run_attack

    k = resolve_size(args, [args.attack])
    kind = get_attack(args.attack, **kind_options(args))  # options checked before any work
    threat = threat_from_args(args)
    policy = policy_from_args(args)
    target = load_target_from_args(args, check=lambda n: kind.check_fits(k, args.num_attacks, n))
    result = run_attack(target.model, target.gallery, kind, args.eps, k, args.num_attacks,
                        seed=args.seed, batch_size=args.batch_size, threat=threat,
                        progress=not args.quiet, policy=policy,
                        index=index_from_args(args, target))
    s = result.summary()
    emit(args, {**s, "memory_budget": policy.memory_budget, **target.record(args.seed)},
         format_attack(s))


def cmd_grid(args) -> None:
    from advrank.attacks.base import check_fits_all, make_kinds
    from advrank.experiments.grid import run_grid
    from advrank.experiments.paper import paper_eps, paper_table_for

    ks = resolve_size(args, args.attacks)
    kinds = make_kinds(args.attacks, kind_options(args))  # options checked before any work
    policy = policy_from_args(args)
    upload_threat(args)  # the pipeline options, checked before any work
    if args.paper != "auto":
        paper_table_for({}, args.paper)
    target_spec(args)
    if args.eps_values is None and args.data is not None:
        paper_eps(args.data)  # a picture collection has no paper rows: refused before work
    check_writable_dir(args.out)
    target = load_target_from_args(
        args, check=lambda n: check_fits_all(kinds.values(), ks, args.num_attacks, n))
    eps_values = args.eps_values or paper_eps(target.meta["dataset"])
    paper = paper_table_for(target.meta, args.paper)
    results = run_grid(target.model, target.gallery, args.out, eps_values, ks, args.attacks,
                       args.num_attacks, args.seed, args.batch_size, paper,
                       target.record(args.seed), progress=not args.quiet, policy=policy,
                       index=index_from_args(args, target), pipeline=args.pipeline,
                       through_pipeline=args.through_pipeline, **kind_options(args))
    from advrank.core import distributed

    table = (Path(args.out) / "table.md").read_text() if distributed.is_main() else ""
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
                    "set (or --model on --data) used as the candidate set X, with the paper's "
                    "selection rules: CA+/QA+ pick Q/C at random, CA-/QA- from the top 1% of "
                    "the ranking list.")
    add_target_options(p)
    p.add_argument("--attack", required=True, type=attack_name, metavar=attack_metavar())
    add_threat(p)
    add_size(p, default=1)
    p.add_argument("--num-attacks", type=positive_int, default=1000,
                   help="T independent attacks")
    p.add_argument("--batch-size", type=integer(1, 1_000_000), default=256,
                   help="attacks per PGD batch (results do not depend on it); split further "
                        "when it does not fit --memory-budget")
    add_kind_options(p)
    add_execution(p)
    add_index(p, what=", measured beside exact search (whose ranks stay the headline)")
    add_pipeline(p)
    add_common(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser(
        "grid", help="the paper's full attack grid (Tables 1-4), resumable",
        formatter_class=formatter,
        description="Run every attack x eps x w/m cell and write results.json (after each "
                    "cell, so rerunning resumes), results.csv and table.md.")
    add_target_options(p)
    p.add_argument("--out", required=True, type=path_value, help="output folder")
    p.add_argument("--num-attacks", type=positive_int, default=1000, help="T attacks per cell")
    p.add_argument("--eps-values", type=listed(eps_value, "eps values"), default=None,
                   help="comma-separated eps rows (default: the paper's for the dataset)")
    add_size(p, default=[1, 2, 5, 10], multiple=True)
    p.add_argument("--attacks", type=listed(attack_name, "attack names"),
                   default=["CA+", "CA-", "QA+", "QA-"], help="comma-separated attacks")
    p.add_argument("--batch-size", type=integer(1, 1_000_000), default=256,
                   help="attacks per PGD batch (results do not depend on it); split further "
                        "when it does not fit --memory-budget")
    add_kind_options(p)
    add_execution(p)
    p.add_argument("--paper", default="auto",
                   help="paper table to print beside ours: auto, none, mnist, mnist-defended, "
                        "fashion, fashion-defended, sop")
    add_index(p, what=", measured beside exact search (whose ranks stay the headline)")
    add_pipeline(p)
    add_common(p)
    p.set_defaults(func=cmd_grid)
