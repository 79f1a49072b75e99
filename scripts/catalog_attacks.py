"""White-box CA+ through a catalog's ingestion (issue 31): MNIST C2F1 at eps = 0.3, the lab's
c~ (PGD on float pixels, the paper's §4 selection) uploaded to ``advrank serve --writable``
(started by the script on a free loopback port, stopped at the end) under each service
configuration, its rank read from its queries' searches (``rank_of``, the service serving
every depth) beside the lab's rank before/after.

    python scripts/catalog_attacks.py --out results/catalog-mnist

``--query-attacks T``: also query-only CA± through uploads on each service (at most
``--query-uploads`` uploads and ``--query-searches`` searches per attack, budgeted apart).

Service configurations: ``--pipelines`` (default png, jpeg:75) x ``--indexes`` (default
flat, hnsw). The T attacks run once in the lab; the same c~ go through every configuration
(one upload each, deleted once its queries have searched: every service is left as it was
found). The clean candidate stays in the catalog; c~ is read as replacing it (q and c left
out of the count, as the lab counts). Figures, % of |X|: ``rank`` (lab, float pixels),
``rank_seen`` (lab, the upload as the service decodes it: 8 bits, then its pipeline) and
``endpoint`` (read from the service). The bearer token is drawn afresh per run and never
recorded. Writes OUT/results.json (command, seed, commit, hardware, every row) and
OUT/results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import time

FIGURES = ("rank", "rank_seen", "endpoint")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/mnist-c2f1.pt", help="the served model")
    p.add_argument("--out", default="results/catalog-mnist")
    p.add_argument("--attack", default="CA+", choices=("CA+", "CA-"))
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--w", type=int, default=1, help="queries per attack (|Q|)")
    p.add_argument("--num-attacks", type=int, default=200)
    p.add_argument("--steps", type=int, default=None, help="PGD steps (default: the paper's)")
    p.add_argument("--pipelines", default="png,jpeg:75")
    p.add_argument("--indexes", default="flat,hnsw")
    p.add_argument("--query-attacks", type=int, default=0,
                   help="also run this many query-only attacks through uploads per "
                        "configuration (0: none)")
    p.add_argument("--query-uploads", type=int, default=50, help="uploads per query-only attack")
    p.add_argument("--query-searches", type=int, default=2000,
                   help="searches per query-only attack")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=100)
    return p.parse_args(argv)


def lab_images(args, target):
    """The lab's ``(part, c~)`` batches, made once for every configuration."""
    from advrank.attacks import get_attack
    from advrank.attacks.threat import LinfThreatModel
    from advrank.experiments.catalog import white_box_batches

    kind = get_attack(args.attack)
    threat = kind.threat_for(LinfThreatModel(args.eps, steps=args.steps))
    t0 = time.time()
    batches = [(part, adv.detach()) for part, adv in white_box_batches(
        target.model, target.gallery, kind, threat, args.w, args.num_attacks, args.seed,
        args.batch_size, progress=False)]
    print(f"lab: {args.num_attacks} {args.attack} attacks in {time.time() - t0:.0f} s",
          file=sys.stderr, flush=True)
    return kind, threat, batches


def through(args, target, kind, threat, batches, index: str, pipeline: str) -> dict:
    """One service configuration: the catalog run's summary as a row."""
    from script_results import serving

    from advrank.experiments.catalog import run_catalog_attack
    from advrank.oracles.catalog import CatalogClient
    from advrank.oracles.http import HttpOracle

    token = secrets.token_hex(24)  # hex: never read as an option
    t0 = time.time()
    options = ["--writable", "--token", token, "--pipeline", pipeline]
    with serving(args.checkpoint, args.device, 8, options, index=index) as url:
        oracle = HttpOracle(url, "topk:1")
        try:
            oracle.check_service(target)
            with CatalogClient(oracle, token, args.num_attacks) as client:
                r = run_catalog_attack(target.model, target.gallery, kind, client, args.eps,
                                       args.w, args.num_attacks, args.seed, threat=threat,
                                       progress=False, batches=batches)
            query = query_only(args, target, kind, oracle, token)
        finally:
            oracle.close()
    s = r.summary()
    cat = s.pop("catalog")
    print(f"{index} {pipeline}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return {"index": index, "pipeline": pipeline,
            **{key: s[key] for key in s if key.startswith(FIGURES)},
            **{key: cat[key] for key in ("uploads_used", "deletions", "searches_used",
                                         "uploaded_ids", "held_after", "read_by",
                                         "censored_at", "not_returned", "clean_candidate",
                                         "service")},
            **query, "seconds": time.time() - t0}


def query_only(args, target, kind, oracle, token: str) -> dict:
    """The query-only attacks through uploads on the same service (``query:`` figures)."""
    if args.query_attacks <= 0:
        return {}
    from advrank.experiments.catalog_query import run_catalog_query_attack
    from advrank.oracles.catalog import CatalogClient

    with CatalogClient(oracle, token, args.query_uploads * args.query_attacks) as client:
        r = run_catalog_query_attack(target.model, target.gallery, kind, client, args.eps,
                                     args.w, args.query_attacks, args.query_uploads,
                                     args.query_searches, args.seed)
    s = r.summary()
    cat = s["catalog"]
    return {**{f"query:{key}": s[key] for key in s if key.startswith(("rank", "endpoint"))},
            "query:uploads_used": cat["uploads_used"],
            "query:searches_used": cat["searches_used"],
            "query:held_after": cat["held_after"], "query:not_returned": cat["not_returned"]}


def _pm(r: dict, key: str) -> str:
    return (f"{r[f'{key}_before']:.2f} → {r[f'{key}_after']:.2f} ± "
            f"{r[f'{key}_after_se']:.2f}")


def markdown(rows: list[dict], args) -> str:
    lines = [f"# {args.attack} through the catalog: {args.checkpoint}, eps = {args.eps}, "
             f"w = {args.w}, T = {args.num_attacks}, seed {args.seed}", "",
             "R_CA (% of |X|, before → after ± s.e.): the lab's (float pixels), the lab's of "
             "the upload as the service decodes it, and the one read from the service's "
             "answers after ingestion (rank_of, every depth; the clean candidate kept, c~ "
             "read as replacing it). Every upload deleted afterwards.", "",
             "An approximate index may not return an item at any depth: such readings "
             "count as the last place (censored); 'not returned' counts them (c before / c~ "
             "after, of T·w readings).", "",
             "| index | pipeline | lab rank % | lab rank of the upload % | endpoint rank % "
             "| not returned | uploads | searches |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['index']} | {r['pipeline']} | {_pm(r, 'rank')} | "
                     f"{_pm(r, 'rank_seen')} | {_pm(r, 'endpoint')} | "
                     f"{r['not_returned']['before']} / {r['not_returned']['after']} | "
                     f"{r['uploads_used']} | "
                     f"{r['searches_used']} |")
    if rows and "query:endpoint_after" in rows[0]:
        lines += ["", f"Query-only {args.attack} through uploads: T = {args.query_attacks}, "
                  f"at most {args.query_uploads} uploads and {args.query_searches} searches "
                  "per attack (a square random search on the 8-bit grid; no gradient); the "
                  "lab's rank of its final image beside the endpoint's.", "",
                  "| index | pipeline | endpoint rank % | lab rank of the final image % | "
                  "uploads (max) | searches (max) |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['index']} | {r['pipeline']} | {_pm(r, 'query:endpoint')} | "
                         f"{_pm(r, 'query:rank')} | {max(r['query:uploads_used'])} | "
                         f"{max(r['query:searches_used'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    from script_results import publish

    from advrank.core.runtime import set_command
    from advrank.experiments.target import load_target

    set_command(None)
    t0 = time.time()
    target = load_target(args.checkpoint, args.device, progress=False)
    kind, threat, batches = lab_images(args, target)
    rows = [through(args, target, kind, threat, batches, index, pipeline)
            for index in args.indexes.split(",") for pipeline in args.pipelines.split(",")]
    publish(args, markdown(rows, args), rows=rows, wall_seconds=time.time() - t0)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
