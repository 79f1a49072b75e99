"""``advrank robustness``: robrank's Empirical Robustness Score of a model."""

from __future__ import annotations

import re
from pathlib import Path

from advrank.cli.declare import (
    load_target_from_args,
    num_attacks_for,
    num_attacks_from_args,
    target_spec,
)
from advrank.cli.groups import add_batch_size, add_num_attacks, add_target_options
from advrank.cli.parsing import Command, emit
from advrank.cli.values import integer
from advrank.core.io import check_writable_dir
from advrank.experiments.store import claim


def default_out(args, profile: str) -> Path:
    """``robustness-<checkpoint or model name>-<profile>`` in the current folder."""
    name = Path(args.checkpoint).stem if args.checkpoint else re.sub(r"[^\w.-]+", "_",
                                                                      str(args.model))
    return Path(f"robustness-{name}-{profile}")


def cmd_robustness(args) -> None:
    from advrank.experiments.robustness import get_profile, run_robustness

    profile = get_profile(args.profile)  # refused before any work
    out = Path(args.out) if args.out else default_out(args, profile.name)
    check_writable_dir(out)
    target_spec(args)
    with claim(out):  # the folder is ours before anything is written there
        target = load_target_from_args(
            args, check=lambda n: num_attacks_for(args.num_attacks, n))
        t = num_attacks_from_args(args, len(target.gallery))
        result = run_robustness(target.model, target.gallery, out, profile.name, t,
                                args.seed, args.batch_size, args.bootstrap,
                                target.record(args.seed), progress=not args.quiet,
                                force=args.force)
    text = (out / "robustness.md").read_text()
    emit(args, {"out": str(out), **result}, text)


def _robustness_options(p) -> None:
    """robrank's Empirical Robustness Score (ERS) of a model

    Run the ten attacks of a robrank profile (CA+, CA-, QA+, QA- with w = m = 1, TMA, ES,
    LTM, GTM, GTT; rob28: eps 77/255, rob224: eps 8/255; alpha 3/255, 32 PGD steps) on a
    checkpoint's test set (or --model on --data), rescale the ten scores to [0, 100] and average
    them into ERS, with a bootstrap 95% interval. Writes results.json after each attack
    (rerunning resumes) and robustness.md."""
    from advrank.experiments.robustness import PROFILES

    add_target_options(p)
    p.add_argument("--profile", required=True, choices=tuple(PROFILES),
                   help="rob28 for 28x28 inputs (MNIST, Fashion-MNIST), rob224 for 224x224")
    p.add_argument("--out", default=None,
                   help="output folder (default: robustness-<checkpoint name>-<profile>)")
    add_num_attacks(p, "items per attack (robrank attacks the whole test set: give its size)")
    add_batch_size(p)
    p.add_argument("--bootstrap", type=integer(1, 10_000_000), default=1000,
                   help="bootstrap resamples for the ERS interval")
    p.add_argument("--force", action="store_true",
                   help="overwrite a robustness.md in --out that no results.json belongs to, "
                        "and start over instead of resuming")


COMMANDS = (
    Command("robustness", cmd_robustness, _robustness_options),
)
