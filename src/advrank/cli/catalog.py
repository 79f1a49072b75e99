"""``advrank attack --catalog --oracle URL --token-file F``: the white-box CA± image uploaded
through a writable service's ingestion and measured by its queries' searches
(:func:`advrank.experiments.catalog.run_catalog_attack`). Parses, refuses in one line where
it does not apply, calls the library, prints."""

from __future__ import annotations

from pathlib import Path

from advrank.cli.values import path_value
from advrank.errors import AdvrankError


def add_catalog_options(p) -> None:
    g = p.add_argument_group("through a catalog's uploads (CA+/CA-)")
    g.add_argument("--catalog", action="store_true",
                   help="upload each white-box CA± image to the writable service of --oracle "
                        "(POST /items: its decode, pipeline, embedding and index insertion) "
                        "and read its rank from its queries' searches, beside the lab's; the "
                        "uploads are deleted afterwards")
    who = g.add_mutually_exclusive_group()
    who.add_argument("--token-file", type=path_value, default=None, metavar="FILE",
                     help="a file holding the bearer token of the service's writes (never "
                          "printed nor recorded)")
    who.add_argument("--token", default=None, metavar="TOKEN",
                     help="the bearer token itself (a file keeps it out of the process list)")


def _given(args, flags: dict) -> list[str]:
    return [flag for flag, value in flags.items() if value not in (None, False)]


def check_catalog_args(args, kind) -> None:
    """The options of ``--catalog``, refused in one line where they do not apply."""
    from advrank.attacks.ca import CandidateAttack

    if not args.catalog:
        given = _given(args, {"--token-file": args.token_file, "--token": args.token})
        if given:
            raise AdvrankError(f"{given[0]} is for --catalog (uploads to a writable service)")
        return
    if not isinstance(kind, CandidateAttack):
        raise AdvrankError(f"--catalog runs CA+ or CA- (a candidate a seller uploads), not "
                           f"{kind.name}")
    if args.oracle is None:
        raise AdvrankError("--catalog needs --oracle http://HOST:PORT (a service started with "
                           "--writable --token)")
    if args.token_file is None and not args.token:
        raise AdvrankError("--catalog needs --token-file FILE or --token TOKEN (the bearer "
                           "token of the service's writes)")
    from advrank.oracles import split_oracle_spec

    if split_oracle_spec(args.oracle)[0] not in ("http", "https"):
        raise AdvrankError("--catalog uploads to a service: --oracle http://HOST:PORT")
    other = _given(args, {"--feedback": args.feedback, "--query-budget": args.query_budget,
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


def cmd_catalog_attack(args, kind, k: int) -> None:
    from advrank.attacks.selection import num_attacks_for
    from advrank.cli.declare import (
        load_target_from_args,
        num_attacks_from_args,
        policy_from_args,
        upload_threat,
    )
    from advrank.cli.parsing import emit
    from advrank.experiments.catalog import run_catalog_attack
    from advrank.oracles import preflight
    from advrank.oracles.catalog import CatalogClient
    from advrank.oracles.http import HttpOracle
    from advrank.reports.tables import format_attack

    token = args.token if args.token_file is None else read_token(args.token_file)
    threat, policy = upload_threat(args, args.eps), policy_from_args(args)
    preflight(args.oracle)
    target = load_target_from_args(
        args, check=lambda n: kind.check_fits(k, num_attacks_for(args.num_attacks, n), n))
    t = num_attacks_from_args(args, len(target.gallery))
    # the service's own size: a catalog that earlier runs wrote to (and cleaned) has ids past
    # |X|; run_catalog_attack checks that it holds |X| items
    oracle = HttpOracle(args.oracle, "topk:1")
    try:
        oracle.check_service(target)
        with CatalogClient(oracle, token, t) as client:
            result = run_catalog_attack(target.model, target.gallery, kind, client, args.eps,
                                        k, t, seed=args.seed, batch_size=args.batch_size,
                                        threat=threat, progress=not args.quiet, policy=policy)
    finally:
        oracle.close()
    s = result.summary()
    cat = s["catalog"]
    record = target.record(args.seed)  # the command line, with --token's value hidden
    record["command"] = record["command"].replace(token, "<token>")
    emit(args, {**s, **record},
         f"{format_attack(s)}\nthrough the catalog: {cat['uploads_used']} uploads (deleted "
         f"afterwards: {cat['deletions']}), {cat['searches_used']} searches read by "
         f"{cat['read_by']}, pipeline {cat['pipeline'] or 'none'}; the clean candidate "
         f"{cat['clean_candidate']}")
