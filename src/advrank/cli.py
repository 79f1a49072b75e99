"""The ``advrank`` command: one entry point, one subcommand per job.

Each subcommand is a thin wrapper over a documented library function; figures go to stdout
(``--json``: one JSON object), progress and logs to stderr. Every AdvrankError becomes one
readable line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from advrank.errors import AdvrankError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu, or cuda[:i] (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same run")
    p.add_argument("--data-root", default=None,
                   help="folder holding the datasets (default: $ADVRANK_DATA, else ./data)")
    p.add_argument("--download", action="store_true",
                   help="let torchvision download missing MNIST/Fashion-MNIST files (online)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars on stderr")


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """``"1,2,5"`` -> ``(1, 2, 5)``, with a readable error for anything else."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise AdvrankError(f"{option} takes comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise AdvrankError(f"{option} values must be positive, got {text!r}")
    return values


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise AdvrankError(f"{option} takes comma-separated numbers, got {text!r}") from None


def _emit(args, obj: dict, text: str) -> None:
    if args.json:
        print(json.dumps(obj))
    else:
        print(text)


# --------------------------------------------------------------------------- train / evaluate


def cmd_train(args) -> None:
    from advrank.training import TrainConfig, train
    from advrank.utils import resolve_device, run_record

    config = TrainConfig(
        dataset=args.dataset, arch=args.arch, metric=args.metric, loss=args.loss,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, margin=args.margin,
        embed_dim=args.embed_dim, seed=args.seed, data_root=args.data_root,
        download=args.download, device=args.device,
    )
    transform = None
    if args.defense:
        from advrank.defenses import make_defense

        transform = make_defense(args.defense, config, eps=args.defense_eps,
                                 steps=args.defense_steps, step_size=args.defense_step_size)
        config.defense, config.defense_eps = args.defense, transform.eps
        config.extra_meta["defense_threat"] = transform.describe()
    elif args.defense_eps is not None or args.defense_steps is not None:
        raise AdvrankError("--defense-eps/--defense-steps need --defense est or madry")
    result = train(config, args.out, resume=args.resume, init=args.init,
                   batch_transform=transform, progress=not args.quiet)
    meta = result.meta
    _emit(args, {"checkpoint": result.checkpoint, "recall@1": meta["recall@1"],
                 "epochs": meta["epochs_done"], "train_seconds": meta["train_seconds"],
                 "history": result.history, "defense": meta.get("defense"),
                 "defense_eps": meta.get("defense_eps"),
                 **run_record(resolve_device(args.device), args.seed)},
          f"wrote {result.checkpoint}: R@1 {meta['recall@1']:.2f}% after "
          f"{meta['epochs_done']} epochs ({meta['train_seconds']:.0f}s)")


def cmd_evaluate(args) -> None:
    from advrank.checkpoint import model_from_checkpoint
    from advrank.data import load_dataset
    from advrank.distances import get_distance
    from advrank.training import evaluate_model
    from advrank.utils import resolve_device, run_record

    device = resolve_device(args.device)
    model, meta = model_from_checkpoint(args.checkpoint, device)
    dataset = load_dataset(meta["dataset"], "test", args.data_root, args.download)
    ks = parse_ints(args.ks, "--ks")
    metrics = evaluate_model(model, dataset, get_distance(meta["metric"]), device, ks,
                             with_map=True)
    out = {"checkpoint": str(args.checkpoint), "dataset": meta["dataset"],
           "arch": meta["arch"], "metric": meta["metric"], "gallery_size": len(dataset),
           **metrics, **run_record(device, args.seed)}
    text = "  ".join(f"{k} {v:.2f}%" for k, v in metrics.items() if k.startswith("recall"))
    _emit(args, out, f"{meta['dataset']}/{meta['arch']}/{meta['metric']}: {text}  "
                     f"mAP {metrics['map']:.4f}")


def cmd_export(args) -> None:
    from pathlib import Path

    from advrank.checkpoint import export_checkpoint

    meta = export_checkpoint(args.checkpoint, args.out)
    size = Path(args.out).stat().st_size
    _emit(args, {"checkpoint": str(args.out), "source": str(args.checkpoint), "bytes": size,
                 "dataset": meta["dataset"], "arch": meta["arch"]},
          f"wrote {args.out} ({size / 2**20:.1f} MiB, weights and metadata only)")


def build_parser() -> argparse.ArgumentParser:
    from advrank.data import dataset_names
    from advrank.distances import distance_names
    from advrank.models import model_names
    from advrank.training import LOSSES

    parser = argparse.ArgumentParser(
        prog="advrank",
        description="Adversarial ranking attack and defense for deep metric learning "
                    "(Zhou et al., ECCV 2020).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train an embedding model (metric learning)",
                       description="Train an embedding model with a metric-learning loss on "
                                   "class-balanced batches; writes a checkpoint every epoch.")
    p.add_argument("--dataset", required=True, choices=dataset_names(), help="dataset name")
    p.add_argument("--arch", required=True, choices=model_names(), help="model architecture")
    p.add_argument("--metric", default="cosine", choices=distance_names(),
                   help="distance used for training and ranking (default: cosine)")
    p.add_argument("--loss", default="triplet", choices=LOSSES, help="default: triplet")
    p.add_argument("--margin", type=float, default=None,
                   help="loss margin in distance units (default: triplet 0.2 cosine / 1.0 "
                        "Euclidean; contrastive 0.5 / 1.0)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--embed-dim", type=int, default=None,
                   help="embedding size (default per model: c2f1 1024, lenet 128, resnet18 512)")
    p.add_argument("--out", required=True, help="checkpoint path to write")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from --out")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights")
    p.add_argument("--defense", default=None, choices=("est", "madry"),
                   help="adversarial training: est = embedding-shift (Eq. 13); madry = "
                        "adversarial triplets from the ranking attacks (baseline)")
    p.add_argument("--defense-eps", type=float, default=None,
                   help="defense epsilon (default: the dataset's strongest, 0.3 for MNIST)")
    p.add_argument("--defense-steps", type=int, default=None,
                   help="PGD steps per training batch (default: the paper's eta for that eps, "
                        "30 at 0.3; fewer is proportionally cheaper)")
    p.add_argument("--defense-step-size", type=float, default=None,
                   help="PGD step size for the defense (default: the paper's alpha)")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="Recall@K and mAP of a checkpoint on its test set",
                       description="Embed the test set once and rank it against itself, each "
                                   "query left out of its own list.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--ks", default="1,2,4,8", help="comma-separated K for Recall@K")
    _common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="weights-only copy of a checkpoint (no optimiser state)",
                       description="Copy a checkpoint without its optimiser state, e.g. to "
                                   "share it or move it to another machine.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="path of the copy")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_export)

    _extend(sub)
    return parser


def _extend(sub) -> None:
    """Subcommands that live in other modules register themselves here."""
    from advrank import cli_attacks, cli_blackbox, cli_defense

    for module in (cli_attacks, cli_defense, cli_blackbox):
        module.register(sub, _common, _emit)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except AdvrankError as exc:
        print(f"advrank: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("advrank: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "build_parser", "parse_ints", "parse_floats"]
