"""Candidate attacks with text queries on a dual encoder, beside picture queries (issue 35):

    python scripts/text_attacks.py --checkpoint runs/fashion-clip-tiny.pt \\
        --out results/text-fashion

On the checkpoint's test set (the gallery X) and a text query set (``--queries``, default: the
class names of X in four prompt templates), at each eps of ``--eps`` with w = 1 and T attacks:

* text CA+ (``advrank attack --queries Q --attack CA+``): a product photo c is perturbed to
  rise for one random text of the set (a sandal photo for "a photo of a Ankle boot");
* text CA- (moderation): c is drawn among the photos in the top 1% of at least one text, and
  perturbed to leave the results of one of those texts;
* picture CA+ and CA- (the paper's protocol, picture queries from X) on the same model and
  eps; CA+ draws the same candidates c as text CA+ (same seed).

Figures: the normalized rank (%) of c for its queries before and after, the share of attacks
that put c~ first / in the top 10 (CA+) or out of the top 1% (CA-), and recall@1 of the
queries. Writes OUT/results.json (the script's command, seed, commit, hardware; the model's
record; text-to-image and image-to-image retrieval quality; every cell's summary) and
OUT/results.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from fractions import Fraction

DEFAULT_QUERIES = "prompts:a photo of a {}|a picture of a {}|{} for sale|buy a {} online"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/fashion-clip-tiny.pt",
                   help="a dual encoder's checkpoint (advrank train --arch clip-tiny)")
    p.add_argument("--out", default="results/text-fashion")
    p.add_argument("--queries", default=DEFAULT_QUERIES, help="text:FILE or prompts:TEMPLATE")
    p.add_argument("--eps", default="2/255,4/255,8/255,16/255")
    p.add_argument("--w", type=int, default=1)
    p.add_argument("--num-attacks", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=200)
    return p.parse_args(argv)


def shares(result, n: int, attack: str) -> dict:
    """Per-attack shares (%) beyond the means: c~ first and in the top 10 of its queries
    (CA+), out of their top 1% (CA-), from each attack's normalized rank (mean over w)."""
    out = {}
    top1 = math.ceil(0.01 * (n - 1))
    for when, ranks in (("before", result.before["rank"]), ("after", result.after["rank"])):
        positions = [r * n / 100 for r in ranks]  # mean 0-based position over the w queries
        if attack == "CA+":
            out[f"first_{when}"] = 100 * sum(p < 0.5 for p in positions) / len(positions)
            out[f"top10_{when}"] = 100 * sum(p < 9.5 for p in positions) / len(positions)
        else:
            out[f"out_of_top1pct_{when}"] = 100 * sum(p >= top1 - 0.5 for p in positions) / len(
                positions)
    return out


def run(args) -> dict:
    from advrank.attacks import get_attack
    from advrank.experiments.protocol import run_attack
    from advrank.experiments.target import load_target
    from advrank.experiments.textqueries import load_text_queries, text_kind, text_retrieval

    target = load_target(args.checkpoint, args.device)
    gallery, n = target.gallery, len(target.gallery)
    queries = load_text_queries(target, args.queries)
    cells, seconds = [], {}
    for query_form in ("text", "picture"):
        for attack in ("CA+", "CA-"):
            kind = (text_kind(attack, queries) if query_form == "text" else get_attack(attack))
            selection = kind.select(gallery, args.w, args.num_attacks, args.seed)
            cache: dict = {}
            for eps_text in args.eps.split(","):
                eps = float(Fraction(eps_text))
                r = run_attack(target.model, gallery, kind, eps, args.w, args.num_attacks,
                               seed=args.seed, batch_size=args.batch_size, selection=selection,
                               clean_cache=cache, progress=False)
                cells.append({**r.summary(), "query_form": query_form, "eps_text": eps_text,
                              **shares(r, n, attack)})
                seconds[f"{query_form} {attack} {eps_text}"] = r.seconds
                print(f"{query_form} {attack} eps={eps_text}: rank {r.figures['rank_before']:.2f}"
                      f"% -> {r.figures['rank_after']:.2f}%", file=sys.stderr, flush=True)
    model = {k: v for k, v in target.record(args.seed).items()
             if k not in ("command", "seed", "commit", "hardware", "date")}
    return {"target": model, "cells": cells, "seconds": seconds,
            "text_retrieval": text_retrieval(target, queries),
            "image_retrieval": gallery.metrics()}


def _cell(cells, form, attack, eps_text):
    return next(c for c in cells if c["query_form"] == form and c["attack"] == attack
                and c["eps_text"] == eps_text)


def markdown(res: dict, args) -> str:
    t, i = res["text_retrieval"], res["image_retrieval"]
    lines = [f"# Candidate attacks with text queries on {args.checkpoint} (w = {args.w}, T = "
             f"{args.num_attacks}, seed {args.seed})", "",
             f"Queries: `{args.queries}` ({t['query_texts']} texts). Text-to-image retrieval: "
             f"R@1 {t['recall@1']:.1f}%, R@4 {t['recall@4']:.1f}%, mAP {t['map']:.1f}%. "
             f"Image-to-image: R@1 {i['recall@1']:.1f}%, mAP {i['map']:.1f}%.", "",
             "Normalized rank (%) of the candidate c for its w queries, before -> after "
             "(mean ± s.e.); CA+: % of attacks where c~ is first for its query; CA-: % where "
             "c~ has left the query's top 1%.", "",
             "| eps | text CA+ rank | text CA+ first | picture CA+ rank | picture CA+ first | "
             "text CA- rank (moderation) | text CA- out of top 1% | picture CA- rank |",
             "|---|---|---|---|---|---|---|---|"]

    def rank(c):
        return (f"{c['rank_before']:.2f} -> {c['rank_after']:.2f} ± "
                f"{c['rank_after_se']:.2f}")

    for eps_text in args.eps.split(","):
        tp, pp = _cell(res["cells"], "text", "CA+", eps_text), _cell(res["cells"], "picture",
                                                                     "CA+", eps_text)
        tm, pm = _cell(res["cells"], "text", "CA-", eps_text), _cell(res["cells"], "picture",
                                                                     "CA-", eps_text)
        lines.append(f"| {eps_text} | {rank(tp)} | {tp['first_before']:.1f} -> "
                     f"{tp['first_after']:.1f} | {rank(pp)} | {pp['first_before']:.1f} -> "
                     f"{pp['first_after']:.1f} | {rank(tm)} | "
                     f"{tm['out_of_top1pct_before']:.1f} -> {tm['out_of_top1pct_after']:.1f} | "
                     f"{rank(pm)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    from script_results import publish

    t0 = time.time()
    res = run(args)
    publish(args, markdown(res, args), wall_seconds=time.time() - t0, **res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
