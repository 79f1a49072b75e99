"""``advrank curves`` (Fig. 2) and ``advrank demo``: thin wrappers over the experiments."""

from __future__ import annotations

from advrank.cli.declare import target_specs
from advrank.cli.groups import (
    add_batch_size,
    add_common_no_data,
    add_eps,
    add_num_attacks,
    add_target_options,
)
from advrank.cli.parsing import Command, emit, log
from advrank.cli.values import integer, path_value, positive_int
from advrank.core.io import check_writable_dir


def cmd_curves(args) -> None:
    from advrank.core.runtime import resolve_device, run_record
    from advrank.experiments.curves import DEFAULT_CURVE_EPS, defense_curves
    from advrank.reports.tables import format_curves

    eps_values = args.eps or DEFAULT_CURVE_EPS
    models = target_specs(args)
    check_writable_dir(args.out)
    result = defense_curves(
        models, args.out, eps_values=eps_values, num_attacks=args.num_attacks,
        k=args.k, seed=args.seed, device=args.device, data_root=args.data_root,
        download=args.download, batch_size=args.batch_size, progress=not args.quiet,
        record=run_record(resolve_device(args.device), args.seed))
    emit(args, result, format_curves(result))


def cmd_demo(args) -> None:
    from advrank.experiments.demo import run_demo

    check_writable_dir(args.out)
    summary, text = run_demo(args.out, args.epochs, args.num_attacks, args.defense_epochs,
                             args.defense_steps, args.seed, args.device, log(args),
                             progress=not args.quiet and not args.json)
    emit(args, summary, text)


def _curves_options(p) -> None:
    """Fig. 2: attack ranks and max embedding shift vs eps, per checkpoint

    For each model and eps: mean normalized rank after CA+, CA-, QA+ and QA- (w = m = k) and
    the mean maximum embedding-shift distance, on the checkpoint's test set (or --data). Models:
    --checkpoint [LABEL=]PATH or --model [LABEL=]SOURCE, repeated. Writes curves.json,
    curves.csv and curves.png into --out; rerunning the same command reuses the points already
    computed."""
    add_target_options(p, labelled=True)  # vanilla=m.pt labels a model in the plot
    p.add_argument("--out", required=True, type=path_value, help="output folder")
    add_num_attacks(p, "attacks per (attack, eps) point")
    add_eps(p, multiple=True, what="eps point",
            default_text="0,0.01,0.03,0.05,0.1,0.15,0.2,0.25,0.3")
    p.add_argument("--k", type=positive_int, default=1, help="w (CA) and m (QA)")
    add_batch_size(p)


def _demo_options(p) -> None:
    """the main job on the embedded digits: train, evaluate, attack, defend

    Train C2F1 on scikit-learn's handwritten digits, evaluate Recall@K, run a small attack
    grid, train a defended model and compare. Rerunning reuses what is already in --out."""
    p.add_argument("--out", default="advrank-demo", type=path_value, help="output folder")
    p.add_argument("--epochs", type=integer(1, 10_000), default=15, help="training epochs")
    p.add_argument("--num-attacks", type=positive_int, default=200, help="T attacks per cell")
    p.add_argument("--defense-epochs", type=integer(1, 10_000), default=5,
                   help="epochs of defended fine-tuning")
    p.add_argument("--defense-steps", type=integer(1, 10_000), default=10,
                   help="PGD steps per defended batch")


COMMANDS = (
    Command("curves", cmd_curves, _curves_options),
    Command("demo", cmd_demo, _demo_options,
            common=add_common_no_data),
)
