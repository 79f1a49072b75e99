"""Throughput of the HTTP search path: ``advrank serve`` on a checkpoint, searched through the
HTTP oracle (PNG uploads, full-ranking feedback) with a population of pictures at a time.

    python scripts/serve_throughput.py --checkpoint runs/mnist-c2f1.pt --requests 2000

starts the service on a free loopback port (``--max-k`` = |X|), sends ``--requests`` random
pictures in batches of ``--population`` (as a query-only attack does) and prints one JSON line
per mode: ``ids`` (every answer the whole ranked list of ids) and, when the service offers
them, ``named`` (the ranks of ``--named`` gallery ids per picture, what the attacks' full
feedback reads). Queries per second count pictures answered, as the budget does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from advrank.experiments.target import load_target
from advrank.oracles import make_oracle

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from query_attacks import serving  # noqa: E402


def measure(oracle, target, args, named: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    shape = target.meta.image_shape
    sent, t0 = 0, time.perf_counter()
    while sent < args.requests:
        n = min(args.population, args.requests - sent)
        x = torch.rand(n, *shape, generator=gen)
        ids = torch.randint(len(target.gallery), (n, args.named), generator=gen)
        oracle.answer(x, ids if named else None)
        sent += n
    seconds = time.perf_counter() - t0
    return {"mode": "named" if named else "ids", "requests": sent, "seconds": round(seconds, 2),
            "queries_per_second": round(sent / seconds, 1),
            "population": args.population, "concurrency": args.concurrency,
            "named": args.named if named else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/mnist-c2f1.pt")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--population", type=int, default=200, help="pictures per oracle call")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    p.add_argument("--named", type=int, default=7, help="ids named per picture")
    p.add_argument("--modes", default="named,ids")
    p.add_argument("--device", default="cpu")
    p.add_argument("--serve-option", action="append", default=[],
                   help="one more advrank serve option (repeatable)")
    args = p.parse_args(argv)
    target = load_target(args.checkpoint, args.device, progress=False)
    with serving(args.checkpoint, args.device, args.concurrency, args.serve_option) as url:
        oracle = make_oracle(url, target, "full", concurrency=args.concurrency)
        try:
            for mode in args.modes.split(","):
                if mode == "named" and not oracle.ranks_named:
                    print(json.dumps({"mode": "named", "offered": False}), flush=True)
                    continue
                print(json.dumps(measure(oracle, target, args, mode == "named")), flush=True)
        finally:
            oracle.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
