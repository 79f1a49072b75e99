"""The query-only figure of issue 18: MNIST C2F1 at eps = 0.3 attacked through the HTTP
search service with full-ranking feedback and at most 2,000 queries per attack, beside the
white-box rank shift and the transfer attack from a LeNet, on the same T attacks (one seed:
one §4 selection, drawn on the target's ranking).

    python scripts/query_attacks.py --target runs/mnist-c2f1.pt --source runs/mnist-lenet.pt

starts ``advrank serve`` on a free loopback port (``--max-k`` = |X|: full feedback needs every
id), runs for QA+ and QA- (m = 1) the three ``advrank ... --json`` commands below, stops the
service, and writes OUT/results.json (every command's JSON, which records its command, seed,
commit and hardware; the script's own record; the verdict) and OUT/results.md:

    advrank attack    --checkpoint TARGET --attack A --eps E --m 1 --num-attacks T --seed S
    advrank attack    ... --oracle http://127.0.0.1:PORT --feedback full --query-budget B
                          --optimizer OPT
    advrank transfer  --source SOURCE --target TARGET --attack A --eps E --m 1
                          --num-attacks T --seed S --select-on target

The verdict: the query-only shift reaches at least half the white-box shift and beats the
transfer attack's. The HTTP oracle's throughput (queries per second) is recorded as well.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from script_results import ADVRANK, serving  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="runs/mnist-c2f1.pt", help="the served checkpoint")
    p.add_argument("--source", default="runs/mnist-lenet.pt", help="the transfer source")
    p.add_argument("--out", default="results/query-mnist")
    p.add_argument("--eps", default="0.3")
    p.add_argument("--num-attacks", type=int, default=200)
    p.add_argument("--query-budget", type=int, default=2000)
    p.add_argument("--optimizer", default="random")
    p.add_argument("--feedback", default="full")
    p.add_argument("--attacks", default="QA+,QA-")
    p.add_argument("--query-xi", default=None,
                   help="--xi of the query-only runs only (default: the paper's, as the "
                        "white-box runs use; 0 ranks C alone, without keeping C_SP near)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--index", default="exact", help="the service's index (exact, hnsw...)")
    p.add_argument("--oracle", default="http", choices=("http", "local"),
                   help="http: through advrank serve (the figure); local: the same search "
                        "in-process and batched (a fast simulation, not the figure)")
    return p.parse_args(argv)


@contextlib.contextmanager
def service(args):
    """The oracle spec: the URL of :func:`serving` on the target (``local`` with ``--oracle
    local``)."""
    if args.oracle == "local":
        yield f"local:{args.index}" if args.index != "exact" else "local"
        return
    with serving(args.target, args.device, 64, index=args.index) as url:
        yield url


def run_json(argv: list[str]) -> dict:
    """Run ``advrank ARGV --json --quiet`` and return its JSON (the command is echoed)."""
    full = [*ADVRANK, *argv, "--json", "--quiet"]
    print("+ advrank " + shlex.join(argv), file=sys.stderr, flush=True)
    t0 = time.time()
    done = subprocess.run(full, stdout=subprocess.PIPE, text=True, check=True)
    out = json.loads(done.stdout)
    out["wall_seconds"] = time.time() - t0
    return out


def one_attack(args, attack: str, url: str) -> dict:
    common = ["--attack", attack, "--eps", args.eps, "--m", "1", "--num-attacks",
              str(args.num_attacks), "--seed", str(args.seed), "--device", args.device,
              "--batch-size", str(args.batch_size)]
    white = run_json(["attack", "--checkpoint", args.target, *common])
    xi = [] if args.query_xi is None else ["--xi", str(args.query_xi)]
    query = run_json(["attack", "--checkpoint", args.target, *common, "--oracle", url,
                      "--feedback", args.feedback, "--query-budget", str(args.query_budget),
                      "--optimizer", args.optimizer, *xi])
    transfer = run_json(["transfer", "--source", args.source, "--target", args.target,
                         *common, "--select-on", "target"])
    shift = {name: abs(r["rank_after"] - r["rank_before"])
             for name, r in (("white_box", white), ("query_only", query),
                             ("transfer", transfer))}
    return {"attack": attack, "shift": shift,
            "rank_before": white["rank_before"],
            "rank_after": {"white_box": white["rank_after"], "query_only": query["rank_after"],
                           "transfer": transfer["rank_after"]},
            "sp_rank_after": {"white_box": white.get("sp_rank_after"),
                              "query_only": query.get("sp_rank_after"),
                              "transfer": transfer.get("sp_rank_after")},
            "queries_used": query["queries_used"],
            "queries_per_second": query["queries_sent"] / max(query["seconds"], 1e-9),
            "half_white_box": shift["query_only"] >= 0.5 * shift["white_box"],
            "beats_transfer": shift["query_only"] > shift["transfer"],
            "runs": {"white_box": white, "query_only": query, "transfer": transfer}}


def markdown(rows: list[dict], args) -> str:
    via = "the HTTP service" if args.oracle == "http" else "the local oracle (simulation)"
    lines = [f"# Query-only attacks on {args.target} through {via} (eps = {args.eps}, "
             f"T = {args.num_attacks}, {args.feedback} feedback, <= {args.query_budget} "
             f"queries, {args.optimizer})", "",
             "| attack | before | white-box | query-only | transfer (LeNet) | SP rank white-box "
             "/ query-only (worst C_SP member) | queries used | queries/s | >= 1/2 white-box | "
             "beats transfer |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, sp = r["rank_after"], r["sp_rank_after"]
        sp_text = (f"{sp['white_box']:.1f} / {sp['query_only']:.1f}"
                   if sp["white_box"] is not None and sp["query_only"] is not None else "-")
        lines.append(f"| {r['attack']} | {r['rank_before']:.1f} | {a['white_box']:.1f} | "
                     f"{a['query_only']:.1f} | {a['transfer']:.1f} | {sp_text} | "
                     f"{r['queries_used']:.0f} | {r['queries_per_second']:.0f} | "
                     f"{'yes' if r['half_white_box'] else 'no'} | "
                     f"{'yes' if r['beats_transfer'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    from script_results import publish

    from advrank.core.runtime import set_command

    set_command(None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with service(args) as url:
        rows = [one_attack(args, a, url) for a in args.attacks.split(",")]
    publish(args, markdown(rows, args), rows=rows,
            done=all(r["half_white_box"] and r["beats_transfer"] for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
