"""``advrank curves``: Fig. 2, attacks on vanilla vs defended models as eps grows.

Registered by :mod:`advrank.cli`; a thin wrapper over :func:`advrank.defenses.defense_curves`.
"""

from __future__ import annotations

from pathlib import Path

from advrank.errors import AdvrankError


def cmd_curves(args, emit) -> None:
    from advrank.cli import parse_floats
    from advrank.defenses import DEFAULT_CURVE_EPS, defense_curves, format_curves
    from advrank.utils import atomic_write_json, resolve_device, run_record

    eps_values = DEFAULT_CURVE_EPS
    if args.eps_values:  # "0 0.1", "0,0.1" and mixes: one comma-separated list
        eps_values = parse_floats(",".join(args.eps_values), "--eps-values")
    if args.num_attacks is not None and args.num_attacks < 1:
        raise AdvrankError(f"--num-attacks must be positive, got {args.num_attacks}")
    result = defense_curves(
        args.checkpoint, args.out, eps_values=eps_values, num_attacks=args.num_attacks,
        k=args.k, seed=args.seed, device=resolve_device(args.device), data_root=args.data_root,
        download=args.download, batch_size=args.batch_size, progress=not args.quiet,
    )
    record = run_record(resolve_device(args.device), args.seed)
    atomic_write_json(Path(args.out) / "run.json", record)
    emit(args, {**result, **record}, format_curves(result))


def register(sub, common, emit) -> None:
    """Add this module's subcommands to the ``advrank`` parser."""
    p = sub.add_parser(
        "curves", help="Fig. 2: attack ranks and max embedding shift vs eps, per checkpoint",
        description="For each checkpoint and eps: mean normalized rank after CA+, CA-, QA+ and "
                    "QA- (w = m = k) and the mean maximum embedding-shift distance, on the "
                    "checkpoint's test set. Writes curves.json, curves.csv and curves.png into "
                    "--out; rerunning the same command reuses the points already computed.",
    )
    p.add_argument("--checkpoint", action="append", required=True,
                   help="a checkpoint to evaluate; repeat for each model (vanilla, defended)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-attacks", type=int, default=None,
                   help="T attacks per (attack, eps) point (default: min(1000, test set size))")
    p.add_argument("--eps-values", nargs="+", default=None, metavar="EPS",
                   help="eps grid, space- or comma-separated "
                        "(default: 0 0.01 0.03 0.05 0.1 0.15 0.2 0.25 0.3)")
    p.add_argument("--k", type=int, default=1, help="w (CA) and m (QA) (default: 1)")
    p.add_argument("--batch-size", type=int, default=256, help="attacks run together")
    common(p)
    p.set_defaults(func=lambda args: cmd_curves(args, emit))
