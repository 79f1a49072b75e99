"""``advrank attack``, ``advrank grid`` and ``advrank demo``: thin wrappers over the library."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from advrank.errors import AdvrankError


def load_target(args):
    """Model, metadata and embedded test-set gallery for ``--checkpoint``."""
    from advrank.checkpoint import model_from_checkpoint
    from advrank.data import load_dataset
    from advrank.distances import get_distance
    from advrank.protocol import Gallery
    from advrank.utils import resolve_device, seed_everything

    seed_everything(args.seed)
    device = resolve_device(args.device)
    model, meta = model_from_checkpoint(args.checkpoint, device)
    dataset = load_dataset(meta["dataset"], "test", args.data_root, args.download)
    gallery = Gallery.build(model, dataset, get_distance(meta["metric"]), device)
    return model, meta, gallery, device


def run_context(args, meta: dict, device) -> dict:
    """What results record beside the numbers: command, seed, commit, hardware, model."""
    from advrank.utils import file_sha256, run_record

    return {**run_record(device, args.seed),
            "checkpoint": str(args.checkpoint), "checkpoint_sha": file_sha256(args.checkpoint, 12),
            "dataset": meta["dataset"], "arch": meta["arch"], "metric": meta["metric"],
            "loss": meta.get("loss"), "defense": meta.get("defense"),
            "recall@1": meta.get("recall@1")}


def cmd_attack(args) -> None:
    from advrank.attacks import LinfThreatModel, parse_attack
    from advrank.protocol import run_attack

    spec = parse_attack(args.attack)
    k = args.w if spec.target == "CA" else args.m
    if k is None:
        k = args.m if spec.target == "CA" else args.w
    if k is None:
        k = 1
    threat = LinfThreatModel(args.eps, args.step_size, args.steps, args.random_start)
    model, meta, gallery, device = load_target(args)
    result = run_attack(model, gallery, spec, args.eps, k, args.num_attacks, seed=args.seed,
                        batch_size=args.batch_size, xi=args.xi, g=args.G, threat=threat,
                        progress=not args.quiet, sp_reduction=args.sp_reduction)
    s = result.summary()
    out = {**s, "w" if spec.target == "CA" else "m": k, **run_context(args, meta, device)}
    text = (f"{spec.name} eps={args.eps:g} {'w' if spec.target == 'CA' else 'm'}={k}: "
            f"rank {s['rank_before']:.2f}% -> {s['rank_after']:.2f}% "
            f"(± {s['rank_after_se']:.2f}, T={s['num_attacks']}, |X|={s['gallery_size']})")
    if "sp_rank_after" in s:
        text += f"; worst C_SP rank {s['sp_rank_before']:.2f}% -> {s['sp_rank_after']:.2f}%"
    text += f"; R@1 {s['recall@1_before']:.1f}% -> {s['recall@1_after']:.1f}%"
    args.emit(args, out, text)


def cmd_grid(args) -> None:
    from advrank.data import dataset_info
    from advrank.grid import run_grid

    model, meta, gallery, device = load_target(args)
    from advrank.cli import parse_floats, parse_ints

    eps_values = (parse_floats(args.eps_values, "--eps-values")
                  if args.eps_values else dataset_info(meta["dataset"]).eps_grid)
    ks = parse_ints(args.ks, "--ks")
    attacks = tuple(a.strip() for a in args.attacks.split(","))
    _validate_paper(args.paper)
    paper = None if args.paper == "none" else args.paper
    if paper == "auto":
        from advrank.reports import PAPER_TABLES

        name = meta["dataset"] + ("-defended" if meta.get("defense") else "")
        paper = name if name in PAPER_TABLES and meta["metric"] == (
            "euclidean" if meta["dataset"] == "sop" else "cosine") else None
    results = run_grid(model, gallery, args.out, eps_values, ks, attacks, args.num_attacks,
                       args.seed, args.batch_size, paper, run_context(args, meta, device),
                       progress=not args.quiet, sp_reduction=args.sp_reduction)
    table = (Path(args.out) / "table.md").read_text()
    args.emit(args, {"out": str(args.out), "cells": list(results["cells"].values())}, table)


def cmd_demo(args) -> None:
    """Train on the embedded digits, evaluate, attack (small grid), defend, compare."""
    from advrank.checkpoint import model_from_checkpoint
    from advrank.data import load_dataset
    from advrank.distances import get_distance
    from advrank.grid import run_grid
    from advrank.protocol import Gallery
    from advrank.reports import markdown_table
    from advrank.training import TrainConfig, evaluate_model, train
    from advrank.utils import resolve_device

    t0 = time.time()
    out = Path(args.out)
    device = resolve_device(args.device)
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
    config = TrainConfig(dataset="digits", arch="c2f1", epochs=args.epochs, seed=args.seed,
                         device=str(device), embed_dim=128)
    ckpt = out / "digits-c2f1.pt"
    log(f"[1/3] training C2F1 on scikit-learn digits ({args.epochs} epochs) -> {ckpt}")
    train(config, ckpt, resume=True, progress=False) if not ckpt.exists() else None
    model, meta = model_from_checkpoint(ckpt, device)
    test = load_dataset("digits", "test")
    distance = get_distance("cosine")
    metrics = evaluate_model(model, test, distance, device, with_map=True)
    log(f"      R@1 {metrics['recall@1']:.1f}%  mAP {metrics['map']:.3f}  "
        f"(|X| = {len(test)} test images)")
    log(f"[2/3] attack grid: CA+, CA-, QA+, QA- with w = m = 1, T = {args.num_attacks}")
    gallery = Gallery.build(model, test, distance, device)
    eps_values = (0.0, 0.03, 0.1, 0.3)
    grid = run_grid(model, gallery, out / "grid-vanilla", eps_values, ks=(1,),
                    num_attacks=args.num_attacks, seed=args.seed,
                    meta={"dataset": "digits", "arch": "c2f1", "metric": "cosine",
                          "recall@1": metrics["recall@1"]}, progress=False)
    cells = list(grid["cells"].values())
    summary = {"vanilla": {"recall@1": metrics["recall@1"], "map": metrics["map"],
                           "cells": cells}}
    text = markdown_table(cells, title="vanilla digits model: mean rank after attack (%)")
    comparison = _demo_defense(args, ckpt, out, device, log)
    summary["defense_comparison"] = {k: v for k, v in comparison.items() if k != "text"}
    text += "\nvanilla vs defended (embedding-shift adversarial training):\n"
    text += comparison["text"] + "\n"
    summary["seconds"] = time.time() - t0
    args.emit(args, summary, text + f"\ndemo finished in {summary['seconds']:.0f}s; "
                                    f"outputs in {out}/")


def _demo_defense(args, vanilla_ckpt, out, device, log) -> dict:
    """Fine-tune the digits model with embedding-shift adversarial training, then compare."""
    from advrank.defenses import defense_comparison, make_defense
    from advrank.training import TrainConfig, train

    config = TrainConfig(dataset="digits", arch="c2f1", epochs=args.defense_epochs,
                         seed=args.seed, device=str(device), embed_dim=128, defense="est",
                         defense_eps=0.3)
    transform = make_defense("est", config, eps=0.3, steps=args.defense_steps)
    config.extra_meta["defense_threat"] = transform.describe()
    ckpt = out / "digits-c2f1-est.pt"
    log(f"[3/3] embedding-shift adversarial training (Eq. 13, eps 0.3, {args.defense_steps} "
        f"PGD steps), fine-tuning {args.defense_epochs} epochs -> {ckpt}")
    train(config, ckpt, resume=True, init=vanilla_ckpt, batch_transform=transform,
          progress=False)
    return defense_comparison(vanilla_ckpt, ckpt, eps=0.3, k=1, num_attacks=args.num_attacks,
                              seed=args.seed, device=device)


def register(sub, common, emit) -> None:
    from advrank.attacks import ATTACKS

    p = sub.add_parser(
        "attack", help="run T attacks of one kind and report normalized ranks",
        description="White-box adversarial ranking attack (L-inf PGD) on a checkpoint's test "
                    "set used as the candidate set X, with the paper's selection rules: CA+/QA+ "
                    "pick Q/C at random, CA-/QA- from the top 1%% of the ranking list.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--attack", required=True, choices=ATTACKS)
    p.add_argument("--eps", type=float, required=True, help="L-inf budget in [0, 1] pixel units")
    p.add_argument("--w", type=int, default=None, help="queries per candidate attack (CA)")
    p.add_argument("--m", type=int, default=None, help="candidates per query attack (QA)")
    p.add_argument("--num-attacks", type=int, default=1000, help="T independent attacks")
    p.add_argument("--batch-size", type=int, default=256, help="attacks per PGD batch")
    p.add_argument("--xi", type=float, default=None,
                   help="SP weight for QA (default: paper, 1 for QA+ and 100 for QA-)")
    p.add_argument("--G", type=int, default=5, help="size of C_SP for the SP term (default 5)")
    p.add_argument("--sp-reduction", default="sum", choices=("sum", "mean"),
                   help="QA (Eq. 12): sum the hinge terms over C and C_SP as written (default) "
                        "or average them; 'mean' is the reading that matches the paper's "
                        "QA numbers")
    p.add_argument("--steps", type=int, default=None,
                   help="PGD iterations (default: paper, min(max(10, 2 eps / alpha), 30))")
    p.add_argument("--step-size", type=float, default=None,
                   help="PGD step (default: paper, min(max(eps / 10, 1/255), 0.01))")
    p.add_argument("--random-start", action="store_true",
                   help="start PGD at a uniform point of the ball (paper: no)")
    common(p)
    p.set_defaults(func=cmd_attack, emit=emit)

    p = sub.add_parser(
        "grid", help="the paper's full attack grid (Tables 1-4), resumable",
        description="Run every attack x eps x w/m cell and write results.json (after each "
                    "cell, so rerunning resumes), results.csv and table.md.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-attacks", type=int, default=1000, help="T attacks per cell")
    p.add_argument("--eps-values", default=None,
                   help="comma-separated eps rows (default: the paper's for the dataset)")
    p.add_argument("--ks", default="1,2,5,10", help="comma-separated w/m columns")
    p.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated attacks")
    p.add_argument("--batch-size", type=int, default=256, help="attacks per PGD batch")
    p.add_argument("--sp-reduction", default="sum", choices=("sum", "mean"),
                   help="QA (Eq. 12): sum the hinge terms over C and C_SP as written (default) "
                        "or average them; 'mean' is the reading that matches the paper's "
                        "QA numbers")
    p.add_argument("--paper", default="auto",
                   help="paper table to print beside ours: auto, none, mnist, mnist-defended, "
                        "fashion, fashion-defended, sop")
    common(p)
    p.set_defaults(func=cmd_grid, emit=emit)

    p = sub.add_parser(
        "demo", help="the main job on the embedded digits: train, evaluate, attack, defend",
        description="Train C2F1 on scikit-learn's handwritten digits, evaluate Recall@K, run "
                    "a small attack grid, train a defended model and compare.")
    p.add_argument("--out", default="advrank-demo", help="output folder (default advrank-demo)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--num-attacks", type=int, default=200, help="T attacks per grid cell")
    p.add_argument("--defense-epochs", type=int, default=5,
                   help="epochs of defended fine-tuning (default 5)")
    p.add_argument("--defense-steps", type=int, default=10,
                   help="PGD steps per defended batch (default 10)")
    common(p)
    p.set_defaults(func=cmd_demo, emit=emit)


def _validate_paper(name):
    from advrank.reports import PAPER_TABLES

    if name not in (None, "auto", "none") and name not in PAPER_TABLES:
        raise AdvrankError(f"unknown paper table {name!r}; choose from {sorted(PAPER_TABLES)}")
