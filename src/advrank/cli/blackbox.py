"""The black-box subcommands of §5: ``transfer``, ``transfer-matrix`` and ``universal``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from advrank.cli.attack import threat_from_args
from advrank.cli.declare import (
    kind_options,
    load_target_from_args,
    num_attacks_for,
    num_attacks_from_args,
    resolve_size,
    target_specs,
)
from advrank.cli.groups import (
    add_attack,
    add_attacks,
    add_batch_size,
    add_eps,
    add_kind_options,
    add_num_attacks,
    add_size,
    add_target_options,
    add_threat,
)
from advrank.cli.parsing import Command, emit, model_label
from advrank.cli.values import format_eps, integer, number, path_value
from advrank.core.io import check_writable_dir
from advrank.errors import AdvrankError


def _fmt(mean: float, se: float) -> str:
    return f"{mean:.1f}±{se:.1f}"


def _transfer_pair(args) -> dict:
    """{"source": spec, "target": spec} of ``--source``/``--target`` (checkpoints) or the
    labelled model options (``--model source=timm:x`` and the like)."""
    specs = dict(target_specs(args))
    if set(specs) != {"source", "target"}:
        raise AdvrankError("give the two models as --source PATH and --target PATH, or as "
                           "--checkpoint/--model source=... and target=..., got "
                           f"{', '.join(map(str, specs))}")
    return specs


def cmd_transfer(args) -> None:
    from advrank.attacks import get_attack
    from advrank.experiments.target import load_target
    from advrank.experiments.transfer import transfer_attack

    k = resolve_size(args, [args.attack])
    kind = get_attack(args.attack, **kind_options(args))
    threat = threat_from_args(args)
    specs = _transfer_pair(args)

    def check(n: int) -> None:
        kind.check_fits(k, num_attacks_for(args.num_attacks, n), n)

    src, tgt = (load_target(specs[role], args.device, args.data_root, args.download,
                            check=check, progress=not args.quiet) for role in specs)
    if src.meta.dataset != tgt.meta.dataset:
        raise AdvrankError(f"source is a {src.meta.dataset} model, target a "
                           f"{tgt.meta.dataset} one; transfer needs one shared test set")
    out = transfer_attack(src.model, tgt.model, src.dataset, kind, args.eps, k=k,
                          num_attacks=num_attacks_from_args(args, len(src.gallery)),
                          seed=args.seed, device=src.device,
                          batch_size=args.batch_size, threat=threat, select_on=args.select_on,
                          source_gallery=src.gallery, target_gallery=tgt.gallery,
                          progress=not args.quiet)
    out.update({"source_checkpoint": src.source, "target_checkpoint": tgt.source,
                **tgt.record(args.seed)})
    s = out["source"]
    emit(args, out,
         f"{out['attack']} eps={format_eps(args.eps)} k={k} T={out['num_attacks']}: target "
         f"{model_label(tgt.source, tgt.meta)} "
         f"{_fmt(out['rank_before'], out['rank_before_se'])} → "
         f"{_fmt(out['rank_after'], out['rank_after_se'])}%  (source "
         f"{model_label(src.source, src.meta)} white-box {s['rank_before']:.1f} → "
         f"{s['rank_after']:.1f}%)")


def cmd_transfer_matrix(args) -> None:
    from advrank.attacks.base import make_kinds
    from advrank.core.runtime import resolve_device, run_record
    from advrank.experiments.transfer import transfer_matrix
    from advrank.reports.tables import transfer_markdown

    specs = target_specs(args)
    unnamed = [spec.checkpoint or spec.model for name, spec in specs if name is None]
    if unnamed:
        raise AdvrankError(f"name each model of the matrix: --checkpoint NAME=PATH or --model "
                           f"NAME=SOURCE, got {unnamed[0]!r}")
    k = resolve_size(args, args.attacks)
    make_kinds(args.attacks, kind_options(args))
    check_writable_dir(args.out)
    matrix = transfer_matrix(
        dict(specs), attacks=args.attacks, eps=args.eps, k=k, num_attacks=args.num_attacks,
        seed=args.seed, out_dir=args.out, device=args.device, batch_size=args.batch_size,
        steps=args.steps, select_on=args.select_on, data_root=args.data_root,
        download=args.download, progress=not args.quiet,
        record=run_record(resolve_device(args.device), args.seed), **kind_options(args))
    emit(args, matrix, transfer_markdown(matrix) + f"\nwrote {args.out}/transfer.json and "
                                                   f"{args.out}/transfer.md")


def cmd_universal(args) -> None:
    from advrank.experiments.universal import check_universal, run_universal, universal_kind

    k = resolve_size(args, [args.attack])
    kind = universal_kind(args.attack, args.xi)
    check_universal(kind, k, None, args.fraction, args.mode, args.chunk_size)
    if args.out:
        check_writable_dir(args.out)
    target = load_target_from_args(
        args, check=lambda n: check_universal(kind, k, n, args.fraction, args.mode,
                                              args.chunk_size))
    settings = {"k": k, "seed": args.seed, "fraction": args.fraction, "steps": args.steps,
                "step_size": args.step_size, "mode": args.mode, "chunk_size": args.chunk_size}
    # with --out a results folder (resumable, with r, a picture and the JSON); without, the
    # same declaration in memory
    result = run_universal(target, kind, args.eps, args.out, progress=not args.quiet,
                           **settings)
    text = (f"{result['attack']} eps={args.eps:g} k={k} ({args.mode} targets, "
            f"{result['set_size']} seen + {result['set_size']} unseen, "
            f"{result['threat']['steps']} steps): seen "
            f"{_fmt(result['rank_before'], result['rank_before_se'])} → "
            f"{_fmt(result['rank_after'], result['rank_after_se'])}%, unseen "
            f"{_fmt(result['rank_before_unseen'], result['rank_before_unseen_se'])} → "
            f"{_fmt(result['rank_after_unseen'], result['rank_after_unseen_se'])}%")
    if result["reported"] != result["set_size"]:
        text += (f"  (figures over the {result['reported']} members of each set ranked highest "
                 "before the attack)")
    emit(args, result, text + (f"\nwrote {result['png']}" if args.out else ""))


def _transfer_options(p: argparse.ArgumentParser, eps_default: float | None) -> None:
    """The threat model and protocol options shared by ``transfer`` and ``transfer-matrix``."""
    add_threat(p, eps_required=eps_default is None, eps_default=eps_default)
    add_size(p, default=1)
    add_num_attacks(p, "attacks per cell")
    add_batch_size(p)
    add_kind_options(p)
    p.add_argument("--select-on", choices=("source", "target"), default="source",
                   help="whose ranking the '-' top-1%% pools and C_SP come from (source: all a "
                        "black-box attacker knows)")


def _role(role: str) -> Callable[[str], tuple[str, str, str]]:
    """argparse type of ``--source``/``--target``: a checkpoint in that role, the form
    :func:`target_specs` reads."""
    return lambda text: ("checkpoint", role, path_value(text))


def _pair_options(p: argparse.ArgumentParser) -> None:
    """transfer attack: adversarial examples from one model, ranked by another

    Make adversarial examples white-box on --source and rank them with --target (checkpoints;
    or --model source=SOURCE / target=SOURCE with --data, either kind for either role) (Table
    5), with identical selections (the same c and Q, or q and C). Figures are mean normalized
    ranks (%) on the target."""
    p.add_argument("--source", dest="targets", action="append", type=_role("source"),
                   metavar="PATH",
                   help="checkpoint the attack is made on (or --model source=SOURCE)")
    p.add_argument("--target", dest="targets", action="append", type=_role("target"),
                   metavar="PATH",
                   help="checkpoint the examples are ranked by (or --model target=SOURCE)")
    add_target_options(p, labelled=True)
    add_attack(p)
    _transfer_options(p, None)


def _matrix_options(p: argparse.ArgumentParser) -> None:
    """the full transfer matrix of Table 5, resumable

    Fill rows = source, columns = target for each attack (models: --checkpoint NAME=PATH or
    --model NAME=SOURCE with --data, in table order); writes OUT/transfer.json and
    OUT/transfer.md after every (attack, source) row, and resumes an interrupted run from
    transfer.json."""
    add_target_options(p, labelled=True)  # NAME=PATH or NAME=SOURCE, in table order
    p.add_argument("--out", required=True, type=path_value,
                   help="folder for transfer.json and transfer.md")
    add_attacks(p)
    _transfer_options(p, 0.3)


def _universal_options(p: argparse.ArgumentParser) -> None:
    """universal (image-agnostic) perturbation, I-CA/I-QA (Table 6)

    Find one perturbation r shared by a random 5% of X (candidates for CA, queries for QA),
    Eq. 14, and evaluate it on those and on a disjoint unseen 5%."""
    add_target_options(p)
    add_attack(p)
    add_eps(p, multiple=False, required=True)
    add_size(p, default=1)
    p.add_argument("--fraction", type=number(0.0, 0.5, low_open=True), default=0.05,
                   help="size of the seen and of the unseen set, as a fraction of X")
    p.add_argument("--xi", type=number(0.0, 1e6), default=None,
                   help="SP weight for I-QA (default: 0, no SP term, as in Table 6)")
    p.add_argument("--steps", type=integer(0, 100_000), default=None,
                   help="PGD iterations on r (default: 100; one r must serve many inputs)")
    p.add_argument("--step-size", type=number(0.0, 1.0, low_open=True), default=None,
                   help="PGD step (default: the paper's alpha for eps)")
    p.add_argument("--mode", choices=("own", "shared"), default="shared",
                   help="shared: one Q/C for all members, Eq. 14 literally; own: each member "
                        "has its own Q/C by the §4 rules")
    p.add_argument("--chunk-size", type=integer(1, 1_000_000), default=256,
                   help="members per forward/backward pass within a PGD step")
    p.add_argument("--out", default=None, type=path_value,
                   help="folder for a PNG of r and an example, r as .pt, and the JSON")


COMMANDS = (
    Command("transfer", cmd_transfer, _pair_options),
    Command("transfer-matrix", cmd_transfer_matrix, _matrix_options),
    Command("universal", cmd_universal, _universal_options),
)
