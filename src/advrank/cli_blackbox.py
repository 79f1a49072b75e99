"""The black-box subcommands of §5: ``transfer``, ``transfer-matrix`` and ``universal``.

Registered by ``advrank.cli``; each is a thin wrapper over :mod:`advrank.blackbox`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from advrank.attacks.ranking import ATTACKS
from advrank.errors import AdvrankError

_ATTACK_METAVAR = "{" + ",".join(ATTACKS) + "}"


def _attack(name: str) -> str:
    """argparse type: an attack name (CA+, CA-, QA+, QA-; the Unicode minus is accepted)."""
    from advrank.attacks.ranking import parse_attack

    try:
        return parse_attack(name).name
    except AdvrankError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _attack_list(text: str) -> list[str]:
    return [_attack(a.strip()) for a in text.split(",") if a.strip()]


def _named_checkpoint(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def _load(path: str, args, device):
    """(model, meta, gallery) of a checkpoint, ranking its own test set with its own metric."""
    from advrank.checkpoint import model_from_checkpoint
    from advrank.data import load_dataset
    from advrank.distances import get_distance
    from advrank.protocol import Gallery

    model, meta = model_from_checkpoint(path, device)
    dataset = load_dataset(meta["dataset"], "test", args.data_root, args.download)
    return model, meta, Gallery.build(model, dataset, get_distance(meta["metric"]), device)


def _fmt(mean: float, se: float) -> str:
    return f"{mean:.1f}±{se:.1f}"


def cmd_transfer(args, emit) -> None:
    from advrank.attacks.threat import LinfThreatModel
    from advrank.blackbox import transfer_attack
    from advrank.utils import resolve_device, run_record

    device = resolve_device(args.device)
    src_model, src_meta, src_gallery = _load(args.source, args, device)
    tgt_model, tgt_meta, tgt_gallery = _load(args.target, args, device)
    if src_meta["dataset"] != tgt_meta["dataset"]:
        raise AdvrankError(f"source is a {src_meta['dataset']} model, target a "
                           f"{tgt_meta['dataset']} one; transfer needs one shared test set")
    threat = LinfThreatModel(args.eps, steps=args.steps)
    out = transfer_attack(
        src_model, tgt_model, src_gallery.dataset, args.attack, args.eps, k=args.k,
        num_attacks=args.num_attacks, seed=args.seed, device=device,
        batch_size=args.batch_size, xi=args.xi, threat=threat, select_on=args.select_on,
        source_gallery=src_gallery, target_gallery=tgt_gallery, progress=not args.quiet,
    )
    out.update({"source_checkpoint": str(args.source), "target_checkpoint": str(args.target),
                "dataset": src_meta["dataset"], **run_record(device, args.seed)})
    src = out["source"]
    emit(args, out,
         f"{out['attack']} eps={args.eps} k={args.k} T={out['num_attacks']}: "
         f"target {tgt_meta['arch']}/{tgt_meta['metric']} "
         f"{_fmt(out['rank_before'], out['rank_before_se'])} → "
         f"{_fmt(out['rank_after'], out['rank_after_se'])}%  "
         f"(source {src_meta['arch']}/{src_meta['metric']} white-box "
         f"{src['rank_before']:.1f} → {src['rank_after']:.1f}%)")


def cmd_transfer_matrix(args, emit) -> None:
    from advrank.blackbox import transfer_markdown, transfer_matrix
    from advrank.utils import atomic_write_json, resolve_device, run_record

    checkpoints = dict(args.checkpoint)
    if len(checkpoints) != len(args.checkpoint):
        raise AdvrankError("checkpoint names must be distinct")
    matrix = transfer_matrix(
        checkpoints, attacks=args.attacks, eps=args.eps, k=args.k,
        num_attacks=args.num_attacks, seed=args.seed, out_dir=args.out,
        device=resolve_device(args.device), batch_size=args.batch_size, steps=args.steps,
        xi=args.xi, select_on=args.select_on, data_root=args.data_root,
        download=args.download, progress=not args.quiet,
    )
    out_dir = Path(args.out)
    atomic_write_json(out_dir / "run.json", run_record(resolve_device(args.device), args.seed))
    emit(args, {**matrix, "json": str(out_dir / "transfer.json"),
                "markdown": str(out_dir / "transfer.md")},
         transfer_markdown(matrix) + f"\nwrote {out_dir / 'transfer.json'} and "
                                     f"{out_dir / 'transfer.md'}")


def cmd_universal(args, emit) -> None:
    import torch

    from advrank.blackbox import save_universal_png, universal_attack
    from advrank.utils import atomic_write_json, resolve_device, run_record

    device = resolve_device(args.device)
    model, meta, gallery = _load(args.checkpoint, args, device)
    result = universal_attack(
        model, gallery, args.attack, args.eps, k=args.k, seed=args.seed,
        fraction=args.fraction, xi=args.xi, steps=args.steps, step_size=args.step_size,
        mode=args.mode, chunk_size=args.chunk_size,
    )
    r = result.pop("perturbation")
    result.update({"checkpoint": str(args.checkpoint), "dataset": meta["dataset"],
                   **run_record(device, args.seed)})
    if args.out:
        out_dir = Path(args.out)
        stem = f"universal-{result['attack']}-eps{args.eps:g}-{args.mode}"
        png = save_universal_png({**result, "perturbation": r}, gallery, out_dir / f"{stem}.png")
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(r, out_dir / f"{stem}.pt")
        result.update({"png": str(png), "perturbation_file": str(out_dir / f"{stem}.pt")})
        atomic_write_json(out_dir / f"{stem}.json", result)
    text = (f"{result['attack']} eps={args.eps} k={args.k} ({args.mode} Q/C, "
            f"{result['set_size']} seen + {result['set_size']} unseen, "
            f"{result['threat']['steps']} steps): seen "
            f"{_fmt(result['rank_before'], result['rank_before_se'])} → "
            f"{_fmt(result['rank_after'], result['rank_after_se'])}%, unseen "
            f"{_fmt(result['rank_before_unseen'], result['rank_before_unseen_se'])} → "
            f"{_fmt(result['rank_after_unseen'], result['rank_after_unseen_se'])}%")
    if result["reported"] != result["set_size"]:
        text += (f"  (figures over the {result['reported']} members of each set ranked highest "
                 "before the attack)")
    if args.out:
        text += f"\nwrote {result['png']}"
    emit(args, result, text)


def _attack_options(p: argparse.ArgumentParser, eps_default: float | None) -> None:
    """The threat model and protocol options shared by ``transfer`` and ``transfer-matrix``."""
    p.add_argument("--eps", type=float, required=eps_default is None, default=eps_default,
                   help="L-inf budget in pixel units" + (
                       f" (default: {eps_default})" if eps_default is not None else ""))
    p.add_argument("--k", type=int, default=1, help="w (CA) or m (QA) (default: 1)")
    p.add_argument("--steps", type=int, default=None,
                   help="PGD iterations (default: the paper's eta for this eps)")
    p.add_argument("--num-attacks", type=int, default=None,
                   help="number of attacks T per cell (default: |X|, as in the paper)")
    p.add_argument("--batch-size", type=int, default=256, help="attacks per PGD batch")
    p.add_argument("--xi", type=float, default=None,
                   help="SP weight for QA (default: the paper's, 1 for QA+ and 100 for QA-)")
    p.add_argument("--select-on", choices=("source", "target"), default="source",
                   help="whose ranking the '-' top-1%% pools and C_SP come from (default: "
                        "source, all a black-box attacker knows)")


def register(sub, common, emit) -> None:
    """Add ``transfer``, ``transfer-matrix`` and ``universal`` to the ``advrank`` parser."""

    p = sub.add_parser(
        "transfer", help="transfer attack: adversarial examples from one model, ranked by another",
        description="Make adversarial examples white-box on --source and rank them with "
                    "--target (Table 5), with identical selections (the same c and Q, or q "
                    "and C). Figures are mean normalized ranks (%) on the target.")
    p.add_argument("--source", required=True, help="checkpoint the attack is made on")
    p.add_argument("--target", required=True, help="checkpoint the examples are ranked by")
    p.add_argument("--attack", required=True, type=_attack, metavar=_ATTACK_METAVAR)
    _attack_options(p, None)
    common(p)
    p.set_defaults(func=lambda args: cmd_transfer(args, emit))

    p = sub.add_parser(
        "transfer-matrix", help="the full transfer matrix of Table 5, resumable",
        description="Fill rows = source, columns = target for each attack; writes "
                    "OUT/transfer.json and OUT/transfer.md after every (attack, source) row, "
                    "and resumes an interrupted run from transfer.json.")
    p.add_argument("--checkpoint", required=True, action="append", type=_named_checkpoint,
                   metavar="NAME=PATH", help="a model of the matrix (repeat, in table order)")
    p.add_argument("--out", required=True, help="folder for transfer.json and transfer.md")
    p.add_argument("--attacks", type=_attack_list, default=list(ATTACKS),
                   help="comma-separated attacks (default: CA+,CA-,QA+,QA-)")
    _attack_options(p, 0.3)
    common(p)
    p.set_defaults(func=lambda args: cmd_transfer_matrix(args, emit))

    p = sub.add_parser(
        "universal", help="universal (image-agnostic) perturbation, I-CA/I-QA (Table 6)",
        description="Find one perturbation r shared by a random 5% of X (candidates for "
                    "CA, queries for QA), Eq. 14, and evaluate it on those and on a disjoint "
                    "unseen 5%.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--attack", required=True, type=_attack, metavar=_ATTACK_METAVAR)
    p.add_argument("--eps", type=float, required=True, help="L-inf budget in pixel units")
    p.add_argument("--k", type=int, default=1, help="w (CA) or m (QA) (default: 1)")
    p.add_argument("--fraction", type=float, default=0.05,
                   help="size of the seen and of the unseen set, as a fraction of X "
                        "(default: 0.05)")
    p.add_argument("--xi", type=float, default=0.0,
                   help="SP weight for I-QA (default: 0, as in Table 6)")
    p.add_argument("--steps", type=int, default=None,
                   help="PGD iterations on r (default: 100; one r must serve many inputs)")
    p.add_argument("--step-size", type=float, default=None,
                   help="PGD step (default: the paper's alpha for eps)")
    p.add_argument("--mode", choices=("own", "shared"), default="shared",
                   help="shared: one Q/C for all members, Eq. 14 literally (default); own: "
                        "each member has its own Q/C by the §4 rules")
    p.add_argument("--chunk-size", type=int, default=256,
                   help="members per forward/backward pass within a PGD step")
    p.add_argument("--out", default=None,
                   help="folder for a PNG of r and an example, r as .pt, and the JSON")
    common(p)
    p.set_defaults(func=lambda args: cmd_universal(args, emit))
