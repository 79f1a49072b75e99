"""The relative order attack (advorder, ICCV 2021) through a search's top-k ids alone, beside
the untargeted top-k disruption (ES), at several query budgets (issue 18):

    python scripts/order_attacks.py --checkpoint runs/mnist-c2f1.pt --out results/order-mnist

On one §4 selection (T queries q, seeded; for each, the first k = 5 members of q's clean list
and a random target order of them), one run per attack at the largest budget of
``--budgets``, the best so far measured at each smaller one (checkpoints: the best of the
rounds completed within B queries; for NES and SPSA exactly what a run with budget B
returns, as ``advrank attack --query-budget B`` would make it; not so for the random search,
whose schedule follows the budget, which is refused here):

* ORDER: ``advrank attack --attack ORDER --k 5 --oracle local --feedback topk:10
  --query-budget B --optimizer nes``: the optimiser maximises advorder's SRC computed from
  the answer's ids;
* ES (the untargeted top-k disruption, the same T queries and budgets), its images scored
  by ORDER's figures as well: how far an attack that does not aim at the order gets by
  chance.

Figures (measured on the whole gallery, q's own clean copy left out): Kendall's tau between
the target order and the candidates' order in q~'s ranking; advorder's SRC at depth 10 (its
tau_N); the candidates' mean 0-based position (the rank shift the attack costs); for ES also
R(q~, q), how far q~ drifts in its own clean copy's ranking (%). The white-box ORDER attack
(PGD on advorder's triplet-chain loss, the same selection) is the ceiling. Writes
OUT/results.json (the script's command, seed, commit, hardware; every run's summary) and
OUT/results.md, with advorder's published Fashion-MNIST figures beside ours.

``--oracle http`` sends every query through ``advrank serve --checkpoint CHECKPOINT`` started
on a free loopback port (``advrank attack --oracle http://127.0.0.1:PORT ...``), one PNG upload
per query, and records the queries per second it reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction

#: advorder's published black-box figures (Fashion-MNIST, C2F2 cosine model, k = 5,
#: eps = 4/255): the appendix's query-budget curve, SRC tau_N of the best query vs budget Q,
#: from cdluminate/advorder bin/qbudcurve.py (commit a9f617c); the talk
#: (assets/transcript.txt) quotes NES at Q = 1000, 0.416, for "five selected candidates and a
#: perturbation budget of four over 255". The visible length N of that curve is not stated
#: in the file (the README's example commands use N = 50).
ADVORDER_FASHION = {
    "source": "github.com/cdluminate/advorder bin/qbudcurve.py (commit a9f617c), "
              "assets/transcript.txt; arXiv 2103.05248",
    "setting": "Fashion-MNIST, C2F2 (cosine), k = 5, eps = 4/255, black-box, SRC tau_N",
    "budgets": [100, 500, 1000, 5000, 10000],
    "tau_N": {"Rand": [0.233, 0.291, 0.309, 0.318, 0.320],
              "Beta": [0.249, 0.313, 0.360, 0.368, 0.382],
              "PSO": [0.280, 0.341, 0.381, 0.382, 0.385],
              "NES": [0.309, 0.380, 0.416, 0.431, 0.438],
              "SPSA": [0.292, 0.365, 0.407, 0.421, 0.433]},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/mnist-c2f1.pt", help="the searched model")
    p.add_argument("--out", default="results/order-mnist")
    p.add_argument("--eps", type=lambda t: float(Fraction(t)), default=0.3,
                   help="the L-inf radius (0.3 or 4/255)")
    p.add_argument("--k", type=int, default=5, help="candidates whose order is attacked")
    p.add_argument("--num-attacks", type=int, default=200)
    p.add_argument("--budgets", default="100,300,1000,2000", help="query budgets per attack")
    p.add_argument("--feedback", default="topk:10")
    p.add_argument("--optimizer", default="nes", choices=("nes", "spsa", "square"),
                   help="a prefix-consistent optimiser (the checkpoints are its budget runs)")
    p.add_argument("--optimizer-options", type=json.loads, default={},
                   help="the optimiser's options as JSON, e.g. '{\"p_init\": 0.05}' (default: "
                        "its defaults, from results/query-sweep)")
    p.add_argument("--legacy", action="store_true",
                   help="nes/spsa with the options of their default before the sweep (the "
                        "results published before it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--attacks", default="ORDER,ES",
                   help="the query-only runs (ORDER, ES or both; the white-box ORDER row is "
                        "always measured)")
    p.add_argument("--oracle", default="local", choices=("local", "http"),
                   help="local: the search in-process and batched; http: through `advrank "
                        "serve --checkpoint CHECKPOINT` started on a free loopback port")
    args = p.parse_args(argv)
    if not {a.strip() for a in args.attacks.split(",")} <= {"ORDER", "ES"}:
        p.error(f"--attacks takes ORDER, ES or both, got {args.attacks!r}")
    if args.legacy and args.optimizer == "square":
        p.error("--legacy applies to nes and spsa (square is new with the sweep)")
    return args


def optimizer_of(args):
    """The optimiser the run uses: its defaults, ``--legacy`` ones, ``--optimizer-options``."""
    from advrank.attacks.query import get_optimizer
    from advrank.registry import OPTIMIZERS

    base = dict(OPTIMIZERS.get(args.optimizer).legacy) if args.legacy else {}
    return get_optimizer(args.optimizer, **base, **args.optimizer_options)


def row(figures: dict, attack: str, budget: int | None, queries: float | None,
        order_prefix: str = "") -> dict:
    """The figures of one run or checkpoint (``order_prefix``: "ORDER:" when ORDER's figures
    measured another kind's images)."""
    out = {"attack": attack, "budget": budget, "queries_used": queries}
    for fig in ("tau", "src", "position"):
        for when in ("before", "after"):
            out[f"{fig}_{when}"] = figures[f"{order_prefix}{fig}_{when}"]
            out[f"{fig}_{when}_se"] = figures[f"{order_prefix}{fig}_{when}_se"]
    if attack == "ES":
        out["own_rank_after"] = figures["rank_after"]  # R(q~, q), %
    return out


def oracle_spec(args):
    """A context giving the oracle spec: ``local``, or the URL of a service started for the
    run (``--oracle http``), stopped on exit."""
    import contextlib

    from script_results import serving

    if args.oracle == "local":
        return contextlib.nullcontext("local")
    return serving(args.checkpoint, args.device, 64)


def run(args) -> tuple[list[dict], dict]:
    from advrank.attacks import get_attack
    from advrank.experiments.protocol import run_attack
    from advrank.experiments.query import run_query_attack
    from advrank.experiments.target import load_target
    from advrank.oracles import make_oracle

    target = load_target(args.checkpoint, args.device)
    gallery = target.gallery
    order, es = get_attack("ORDER"), get_attack("ES")
    sel = order.select(gallery, args.k, args.num_attacks, args.seed)
    white = run_attack(target.model, gallery, order, args.eps, args.k, args.num_attacks,
                       seed=args.seed, batch_size=args.batch_size, selection=sel,
                       progress=False)
    rows, seconds = [row(white.figures, "ORDER", None, None)], {"white-box": white.seconds}
    budgets = sorted(int(b) for b in args.budgets.split(","))
    runs = {"ORDER": (order, args.k, ()), "ES": (es, 1, (order,))}
    for kind, k, also in (runs[name.strip()] for name in args.attacks.split(",")):
        with oracle_spec(args) as spec:
            oracle = make_oracle(spec, target, args.feedback)
            try:
                r = run_query_attack(target, kind, oracle, optimizer_of(args), args.eps, k,
                                     args.num_attacks, budgets[-1], seed=args.seed,
                                     batch_size=args.batch_size, selection=sel,
                                     progress=False, also=also, checkpoints=budgets)
            finally:
                oracle.close()
        seconds[kind.name] = r.seconds
        seconds[f"{kind.name} queries/s"] = r.extra.get("queries_sent", 0) / max(r.seconds,
                                                                                 1e-9)
        for b, figures in r.extra["checkpoints"].items():
            rows.append(row(figures, kind.name, b, figures["queries_used"],
                            "ORDER:" if also else ""))
        print(f"{kind.name}: tau {r.figures[('ORDER:' if also else '') + 'tau_after']:.3f} "
              f"at {budgets[-1]} queries, {r.seconds:.0f} s", file=sys.stderr, flush=True)
    rows.sort(key=lambda r: (r["budget"] or 0, r["attack"] != "ORDER"))
    model = {k: v for k, v in target.record(args.seed).items()  # the run's own record
             if k not in ("command", "seed", "commit", "hardware", "date")}  # is the script's
    return rows, seconds, model


def optimizer_text(args) -> str:
    o = optimizer_of(args).describe()
    return ", ".join(f"{k} = {v}" for k, v in o.items())


def _pm(r: dict, fig: str, when: str = "after") -> str:
    return f"{r[f'{fig}_{when}']:.3f} ± {r[f'{fig}_{when}_se']:.3f}"


def markdown(rows: list[dict], args) -> str:
    first = rows[0]
    lines = [f"# Relative order attack on {args.checkpoint} through "
             f"{'the HTTP service' if args.oracle == 'http' else 'the local oracle'} "
             f"({args.feedback} ids only; eps = {args.eps}, k = {args.k}, T = "
             f"{args.num_attacks}, {args.optimizer}, seed {args.seed})", "",
             f"Optimiser: {optimizer_text(args)}.", "",
             f"Before any attack: tau = {_pm(first, 'tau', 'before')} (the random target "
             f"orders), SRC@10 = {_pm(first, 'src', 'before')}, the candidates' mean "
             f"position = {first['position_before']:.2f}.", "",
             "| attack | query budget | queries used | tau | SRC@10 | candidates' mean "
             "position | R(q~, q) % (ES) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        budget = "white-box PGD" if r["budget"] is None else str(r["budget"])
        used = "-" if r["queries_used"] is None else f"{r['queries_used']:.0f}"
        own = f"{r['own_rank_after']:.2f}" if "own_rank_after" in r else "-"
        lines.append(f"| {r['attack']} | {budget} | {used} | {_pm(r, 'tau')} | "
                     f"{_pm(r, 'src')} | {r['position_after']:.2f} | {own} |")
    a = ADVORDER_FASHION
    ratio = args.eps / (4 / 255)
    eps_text = "the same eps as ours" if abs(ratio - 1) < 1e-6 else \
        f"eps {ratio:.0f}x smaller than ours" if ratio > 1 else f"eps {1 / ratio:.0f}x ours"
    lines += ["", f"advorder's published figures ({a['setting']}; {a['source']}): SRC tau_N "
              f"of the best query at each budget Q. A different dataset, {eps_text} and a "
              "longer visible list: context, not a like-for-like comparison.", "",
              "| optimiser | " + " | ".join(f"Q = {q}" for q in a["budgets"]) + " |",
              "|---|" + "---|" * len(a["budgets"])]
    for name, values in a["tau_N"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    from script_results import publish

    t0 = time.time()
    rows, seconds, target_record = run(args)
    publish(args, markdown(rows, args), target=target_record, wall_seconds=time.time() - t0,
            seconds=seconds, rows=rows, advorder=ADVORDER_FASHION,
            optimizer=optimizer_of(args).describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
