"""``advrank attack`` and ``advrank grid``: thin wrappers over the experiments layer."""

from __future__ import annotations

from pathlib import Path

from advrank.cli.catalog import add_catalog_options, check_catalog_args, cmd_catalog_attack
from advrank.cli.declare import (
    index_from_args,
    kind_options,
    load_target_from_args,
    num_attacks_from_args,
    policy_from_args,
    resolve_size,
    target_spec,
    upload_threat,
)
from advrank.cli.groups import (
    BESIDE_EXACT,
    QUERY_DEFAULTS,
    add_attack,
    add_attacks,
    add_batch_size,
    add_eps,
    add_execution,
    add_index,
    add_kind_options,
    add_num_attacks,
    add_pipeline,
    add_queries,
    add_query_options,
    add_size,
    add_target_options,
    add_threat,
)
from advrank.cli.parsing import Command, emit
from advrank.cli.values import path_value
from advrank.core.io import check_writable_dir
from advrank.errors import AdvrankError
from advrank.reports.tables import format_attack


def threat_from_args(args):
    return upload_threat(args, args.eps)


def remote_oracle(spec: str) -> bool:
    """Whether the oracle of ``spec`` is an endpoint outside this process."""
    from advrank.oracles import split_oracle_spec
    from advrank.registry import ORACLES

    return bool(ORACLES.get(split_oracle_spec(spec)[0]).remote)


def query_settings(args) -> dict | None:
    """The query-only settings (defaults filled in), None for a white-box attack; options of
    the other mode are refused in one line. ``--pipeline`` applies to a query-only attack
    (every candidate is sent through it, and measured as sent); ``--through-pipeline`` (PGD
    through the pipeline's differentiable approximation) does not: no gradient is taken."""
    named = {"--feedback": args.feedback, "--query-budget": args.query_budget,
             "--optimizer": args.optimizer, "--schema": args.schema,
             "--endpoint-differs": args.endpoint_differs or None}
    if args.oracle is None:
        given = [flag for flag, value in named.items() if value is not None]
        if given:
            raise AdvrankError(f"{', '.join(given)} apply to a query-only attack: add --oracle "
                               "local or --oracle http://HOST:PORT")
        return None
    pgd = {"--steps": args.steps, "--step-size": args.step_size,
           "--random-start": args.random_start or None, "--index": args.index,
           "--compile": args.compile or None, "--memory-budget": args.memory_budget,
           "--precision": None if args.precision == "fp32" else args.precision}
    given = [flag for flag, value in pgd.items() if value is not None]
    if given:
        raise AdvrankError(f"{', '.join(given)} apply to white-box PGD, not to a query-only "
                           "attack (--oracle)")
    if args.through_pipeline:
        raise AdvrankError("--through-pipeline applies to white-box PGD (a gradient through "
                           "the pipeline); a query-only attack (--oracle) sends every "
                           "candidate through --pipeline itself")
    remote = [flag for flag, value in (("--endpoint-differs", args.endpoint_differs),
                                       ("--schema", args.schema)) if value]
    if remote and not remote_oracle(args.oracle):
        raise AdvrankError(f"{', '.join(remote)} apply to a remote endpoint (--oracle "
                           "http://HOST:PORT), not to the local copy")
    pipeline = None if args.pipeline in (None, "none") else args.pipeline
    return {**{key: default if getattr(args, key) is None else getattr(args, key)
               for key, default in QUERY_DEFAULTS.items()}, "pipeline": pipeline,
            "endpoint_differs": args.endpoint_differs, "schema": args.schema}


def cmd_query_attack(args, kind, k: int, query: dict) -> None:
    """``advrank attack --oracle ...``: query-only attacks through a search's answers."""
    from advrank.attacks.base import check_query_only
    from advrank.attacks.query import get_optimizer
    from advrank.attacks.selection import num_attacks_for
    from advrank.experiments.query import run_query_attack
    from advrank.oracles import make_oracle, preflight

    check_query_only(kind)
    optimizer = get_optimizer(query["optimizer"])
    remote = {"schema": query["schema"]} if query["schema"] else {}
    preflight(args.oracle, **remote)  # e.g. an unreachable service, before the gallery is embedded
    target = load_target_from_args(
        args, check=lambda n: kind.check_fits(k, num_attacks_for(args.num_attacks, n), n))
    t = num_attacks_from_args(args, len(target.gallery))
    oracle = make_oracle(args.oracle, target, query["feedback"], cache_dir=args.cache_dir,
                         pipeline=query["pipeline"], **remote)
    try:
        result = run_query_attack(target, kind, oracle, optimizer, args.eps, k,
                                  t, query["query_budget"], seed=args.seed,
                                  batch_size=args.batch_size, progress=not args.quiet,
                                  endpoint_differs=query["endpoint_differs"])
    finally:
        oracle.close()
    s = result.summary()
    through = f", each through {query['pipeline']}" if query["pipeline"] else ""
    emit(args, {**s, **target.record(args.seed)},
         f"{format_attack(s)}\n{s['queries_used']:.0f} queries per attack (budget "
         f"{s['query_budget']}{through}) to the {s['oracle']} oracle, {s['feedback']} "
         f"feedback, {s['optimizer']}\n{evaluation_line(s)}"
         f"{calibration_line(s.get('calibration'))}")


def evaluation_line(summary: dict) -> str:
    """Where a query-only result's figures were read (the endpoint's view, censored or not,
    its queries counted apart; the local copy beside or not)."""
    ev = summary["evaluation"]
    view = "its exact ranks" if ev["censored_at"] is None else \
        f"its top {ev['censored_at']} (positions beyond read as {ev['censored_at']})"
    beside = "; the local copy's beside them (local:)" if summary["figures_from"] != \
        "endpoint" else "; the endpoint alone (no local figures)"
    return (f"figures read from the endpoint: {view}, top-k figures at k = {ev['k']} "
            f"({ev['evaluation_queries']} evaluation queries, outside the budget){beside}")


def calibration_line(calibration: dict | None) -> str:
    """The calibration's figures as a line of the text output ("" when none ran)."""
    if not calibration:
        return ""
    figures = ", ".join(f"{name} {value:.2f}" for name, value in
                        calibration["figures"].items())
    note = "" if calibration["passed"] else " (beyond tolerance: the endpoint differs, as " \
                                            "declared)"
    return f"\nendpoint calibration ({calibration['queries']} queries): {figures}{note}"


def cmd_attack(args) -> None:
    from advrank.attacks import get_attack
    from advrank.attacks.selection import num_attacks_for
    from advrank.experiments.protocol import run_attack
    from advrank.experiments.textqueries import check_text_queries, load_text_queries

    k = resolve_size(args, [args.attack])
    kind = get_attack(args.attack, **kind_options(args))  # options checked before any work
    check_text_queries(args.queries, [args.attack])
    check_catalog_args(args, kind)
    if args.catalog:
        return cmd_catalog_attack(args, kind, k)
    query = query_settings(args)
    if query is not None:
        return cmd_query_attack(args, kind, k, query)
    threat = threat_from_args(args)
    policy = policy_from_args(args)
    target = load_target_from_args(
        args, check=lambda n: kind.check_fits(k, num_attacks_for(args.num_attacks, n), n))
    if args.queries is not None:  # Q from the text set, embedded by the text tower
        kind = kind.for_queries(load_text_queries(target, args.queries))
    t = num_attacks_from_args(args, len(target.gallery))
    result = run_attack(target.model, target.gallery, kind, args.eps, k, t,
                        seed=args.seed, batch_size=args.batch_size, threat=threat,
                        progress=not args.quiet, policy=policy,
                        index=index_from_args(args, target))
    s = result.summary()
    texts = (f"\nqueries: {s['text_queries']} ({s['query_texts']} texts)"
             if args.queries is not None else "")
    emit(args, {**s, "memory_budget": policy.memory_budget, **target.record(args.seed)},
         format_attack(s) + texts)


def cmd_grid(args) -> None:
    from advrank.attacks.base import check_fits_all, make_kinds
    from advrank.attacks.selection import num_attacks_for
    from advrank.experiments.grid import run_grid
    from advrank.experiments.paper import PAPER_ATTACKS, paper_eps, paper_table_for
    from advrank.experiments.store import claim
    from advrank.experiments.textqueries import check_text_queries, load_text_queries
    from advrank.registry import ATTACKS

    ks = resolve_size(args, args.attacks)
    if args.queries is not None and args.attacks == list(PAPER_ATTACKS):  # the default
        args.attacks = [a for a in args.attacks if ATTACKS.get(a).text_queries]
    check_text_queries(args.queries, args.attacks)
    kinds = make_kinds(args.attacks, kind_options(args))  # options checked before any work
    policy = policy_from_args(args)
    upload_threat(args)  # the pipeline options, checked before any work
    if args.paper != "auto":
        paper_table_for(None, args.paper)
    target_spec(args)
    if args.eps is None and args.data is not None:
        paper_eps(args.data)  # a picture collection has no paper rows: refused before work
    check_writable_dir(args.out)
    with claim(args.out):  # a second writer is refused before the gallery is embedded
        target = load_target_from_args(args, check=lambda n: check_fits_all(
            kinds.values(), ks, num_attacks_for(args.num_attacks, n), n))
        eps_values = args.eps or paper_eps(target.meta.dataset)
        paper = paper_table_for(target.meta, args.paper)
        t = num_attacks_from_args(args, len(target.gallery))
        queries = (None if args.queries is None else
                   load_text_queries(target, args.queries))
        results = run_grid(target.model, target.gallery, args.out, eps_values, ks, args.attacks,
                           t, args.seed, args.batch_size, paper,
                           target.record(args.seed), progress=not args.quiet, policy=policy,
                           index=index_from_args(args, target), pipeline=args.pipeline,
                           through_pipeline=args.through_pipeline, queries=queries,
                           **kind_options(args))
    from advrank.core import distributed

    table = (Path(args.out) / "table.md").read_text() if distributed.is_main() else ""
    emit(args, {"out": str(args.out), "cells": list(results["cells"].values())}, table)


def _attack_options(p) -> None:
    """run T attacks of one kind and report normalized ranks

    White-box adversarial ranking attack (L-inf PGD) on a checkpoint's test set (or --model
    on --data) used as the candidate set X, with the paper's selection rules: CA+/QA+ pick Q/C
    at random, CA-/QA- from the top 1% of the ranking list."""
    add_target_options(p)
    add_attack(p)
    add_threat(p)
    add_size(p, default=1)
    add_num_attacks(p, "independent attacks")
    add_batch_size(p)
    add_kind_options(p)
    add_execution(p)
    add_index(p, what=BESIDE_EXACT)
    add_query_options(p)
    add_pipeline(p)
    add_queries(p)
    add_catalog_options(p)


def _grid_options(p) -> None:
    """the paper's full attack grid (Tables 1-4), resumable

    Run every attack x eps x w/m cell and write results.json (after each cell, so rerunning
    resumes), results.csv and table.md."""
    add_target_options(p)
    p.add_argument("--out", required=True, type=path_value, help="output folder")
    add_num_attacks(p, "attacks per cell")
    add_eps(p, multiple=True, what="eps row",
            default_text="the paper's rows for the dataset")
    add_size(p, default=[1, 2, 5, 10], multiple=True)
    add_attacks(p)
    add_batch_size(p)
    add_kind_options(p)
    add_execution(p)
    p.add_argument("--paper", default="auto",
                   help="paper table to print beside ours: auto, none, mnist, mnist-defended, "
                        "fashion, fashion-defended, sop")
    add_index(p, what=BESIDE_EXACT)
    add_pipeline(p)
    add_queries(p)


COMMANDS = (
    Command("attack", cmd_attack, _attack_options),
    Command("grid", cmd_grid, _grid_options),
)
