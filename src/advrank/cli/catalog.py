"""``advrank attack --catalog --oracle URL --token-file F``: the white-box CA± image uploaded
through a writable service's ingestion and measured by its queries' searches
(:func:`advrank.experiments.catalog.run_catalog_attack`); with ``--query-budget N
[--upload-budget M]``, query-only CA± through uploads instead
(:func:`advrank.experiments.catalog_query.run_catalog_query_attack`). Parses, refuses in one
line where it does not apply, calls the library, prints. ``advrank audit --catalog`` takes
the same options."""

from __future__ import annotations

from pathlib import Path

from advrank.cli.values import integer, path_value
from advrank.errors import AdvrankError
from advrank.experiments.audit.settings import CATALOG_UPLOADS


def add_catalog_options(p, audit: bool = False) -> None:
    g = p.add_argument_group("through a catalog's uploads (CA+/CA-)")
    g.add_argument("--catalog", action="store_true",
                   help="add the catalog rows to the deployed view: each white-box CA± image "
                        "uploaded to the writable service of --oracle and read from its "
                        "queries' searches, and (with --query-budget) query-only CA± through "
                        "uploads; every upload is deleted afterwards" if audit else
                        "upload each white-box CA± image to the writable service of --oracle "
                        "(POST /items: its decode, pipeline, embedding and index insertion) "
                        "and read its rank from its queries' searches, beside the lab's; the "
                        "uploads are deleted afterwards")
    g.add_argument("--upload-budget", type=integer(2, 100_000), default=None, metavar="M",
                   help="with --query-budget: query-only CA± through uploads, at most M uploads "
                        f"(default {CATALOG_UPLOADS}) and --query-budget searches per attack")
    who = g.add_mutually_exclusive_group()
    who.add_argument("--token-file", type=path_value, default=None, metavar="FILE",
                     help="a file holding the bearer token of the service's writes (never "
                          "printed nor recorded)")
    who.add_argument("--token", default=None, metavar="TOKEN",
                     help="the bearer token itself (a file keeps it out of the process list)")


def _given(args, flags: dict) -> list[str]:
    return [flag for flag, value in flags.items() if value not in (None, False)]


def refuse_without_catalog(args) -> bool:
    """Whether ``--catalog`` is off; its options (token, upload budget) refused in one line
    then."""
    if args.catalog:
        return False
    given = _given(args, {"--token-file": args.token_file, "--token": args.token,
                          "--upload-budget": args.upload_budget})
    if given:
        raise AdvrankError(f"{given[0]} is for --catalog (uploads to a writable service)")
    return True


def check_catalog_link(args) -> None:
    """``--catalog``'s service and token given (refused in one line otherwise)."""
    if args.oracle is None:
        raise AdvrankError("--catalog needs --oracle http://HOST:PORT (a service started with "
                           "--writable --token)")
    if args.token_file is None and not args.token:
        raise AdvrankError("--catalog needs --token-file FILE or --token TOKEN (the bearer "
                           "token of the service's writes)")


def catalog_token(args) -> str:
    """The bearer token of ``--token`` or ``--token-file``."""
    return args.token if args.token_file is None else read_token(args.token_file)


def check_catalog_args(args, kind) -> None:
    """The options of ``--catalog``, refused in one line where they do not apply."""
    from advrank.attacks.ca import CandidateAttack

    if refuse_without_catalog(args):
        return
    if not isinstance(kind, CandidateAttack):
        raise AdvrankError(f"--catalog runs CA+ or CA- (a candidate a seller uploads), not "
                           f"{kind.name}")
    check_catalog_link(args)
    from advrank.oracles import split_oracle_spec

    if split_oracle_spec(args.oracle)[0] not in ("http", "https"):
        raise AdvrankError("--catalog uploads to a service: --oracle http://HOST:PORT")
    if args.upload_budget is not None and args.query_budget is None:
        raise AdvrankError("--upload-budget is for the query-only catalog attack: add "
                           "--query-budget N (searches per attack)")
    if args.query_budget is not None:
        pgd = _given(args, {"--steps": args.steps, "--step-size": args.step_size,
                            "--random-start": args.random_start, "--compile": args.compile,
                            "--memory-budget": args.memory_budget,
                            "--precision": None if args.precision == "fp32" else 1})
        if pgd:
            raise AdvrankError(f"{', '.join(pgd)} apply to white-box PGD, not to the "
                               "query-only catalog attack (--query-budget)")
    other = _given(args, {"--feedback": args.feedback,
                          "--optimizer": args.optimizer, "--schema": args.schema,
                          "--endpoint-differs": args.endpoint_differs,
                          "--pipeline": args.pipeline, "--through-pipeline":
                          args.through_pipeline, "--queries": args.queries,
                          "--index": args.index})
    if other:
        raise AdvrankError(f"{', '.join(other)} do not apply to --catalog (the service's own "
                           "pipeline and index are what it measures)")


def read_token(path: str) -> str:
    """The token in ``path`` (its first line, stripped); its content never shown."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AdvrankError(f"cannot read the token file {path}: "
                           f"{type(exc).__name__}") from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise AdvrankError(f"the token file {path} is empty")
    return token


def check_query_mode(args, k: int) -> None:
    """The query-only catalog attack's budgets, checked before any work."""
    if args.query_budget < 2 * k:
        raise AdvrankError(f"--query-budget {args.query_budget} is below one read of the "
                           f"{k} queries twice (2 x k searches)")
    if args.eps < 1 / 255:
        raise AdvrankError(f"eps {args.eps:g} is below one 8-bit step (1/255): an upload "
                           "cannot move")


def _attack(args, kind, k: int, target, client, t: int, uploads: int):
    """The catalog attack itself: query-only (``--query-budget``) or the lab's white-box
    images uploaded."""
    from advrank.cli.declare import policy_from_args, upload_threat

    if args.query_budget is not None:
        from advrank.experiments.catalog_query import run_catalog_query_attack

        return run_catalog_query_attack(target.model, target.gallery, kind, client, args.eps,
                                        k, t, uploads=uploads, searches=args.query_budget,
                                        seed=args.seed)
    from advrank.experiments.catalog import run_catalog_attack

    return run_catalog_attack(target.model, target.gallery, kind, client, args.eps, k, t,
                              seed=args.seed, batch_size=args.batch_size,
                              threat=upload_threat(args, args.eps), progress=not args.quiet,
                              policy=policy_from_args(args))


def used_line(cat: dict) -> str:
    """What a catalog attack used, in words."""
    if isinstance(cat["uploads_used"], list):  # query-only: per attack, within its budgets
        return (f"query-only through the catalog: at most {max(cat['uploads_used'])} uploads "
                f"(budget {cat['uploads_per_attack']}) and {max(cat['searches_used'])} "
                f"searches (budget {cat['searches_per_attack']}) per attack, "
                f"{len(cat['uploaded_ids'])} uploads in all (deleted afterwards: "
                f"{cat['deletions']}), read by {cat['read_by']}, pipeline "
                f"{cat['pipeline'] or 'none'}")
    return (f"through the catalog: {cat['uploads_used']} uploads (deleted afterwards: "
            f"{cat['deletions']}), {cat['searches_used']} searches read by {cat['read_by']}, "
            f"pipeline {cat['pipeline'] or 'none'}; the clean candidate "
            f"{cat['clean_candidate']}")


def cmd_catalog_attack(args, kind, k: int) -> None:
    from advrank.attacks.selection import num_attacks_for
    from advrank.cli.declare import (
        load_target_from_args,
        num_attacks_from_args,
        policy_from_args,
        upload_threat,
    )
    from advrank.cli.parsing import emit
    from advrank.oracles import preflight
    from advrank.oracles.catalog import CatalogClient
    from advrank.oracles.http import HttpOracle
    from advrank.reports.tables import format_attack

    token = catalog_token(args)
    query = args.query_budget is not None
    if query:
        check_query_mode(args, k)
    else:  # the PGD options, before any work
        upload_threat(args, args.eps)
        policy_from_args(args)
    uploads = args.upload_budget or CATALOG_UPLOADS
    preflight(args.oracle)
    target = load_target_from_args(
        args, check=lambda n: kind.check_fits(k, num_attacks_for(args.num_attacks, n), n))
    t = num_attacks_from_args(args, len(target.gallery))
    # the service's own size: a catalog that earlier runs wrote to (and cleaned) has ids past
    # |X|; run_catalog_attack checks that it holds |X| items
    oracle = HttpOracle(args.oracle, "topk:1")
    try:
        oracle.check_service(target)
        with CatalogClient(oracle, token, t * uploads if query else t) as client:
            result = _attack(args, kind, k, target, client, t, uploads)
    finally:
        oracle.close()
    s = result.summary()
    record = target.record(args.seed)  # the command line, with --token's value hidden
    record["command"] = record["command"].replace(token, "<token>")
    emit(args, {**s, **record}, f"{format_attack(s)}\n{used_line(s['catalog'])}")
