"""``advrank train``, ``evaluate`` and ``export``: thin wrappers over the library."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from advrank.cli.declare import load_target_from_args
from advrank.cli.groups import add_json, add_queries, add_target_options
from advrank.cli.parsing import Command, emit
from advrank.cli.values import eps_value, integer, listed, number, path_value, positive_int
from advrank.errors import AdvrankError
from advrank.models import MAX_EMBED_DIM
from advrank.registry import DATASETS, DEFENSES, DISTANCES, LOSSES, MODELS
from advrank.training.trainer import DEFAULTS as TRAIN_DEFAULTS


def registered(registry) -> Callable[[str], str]:
    """argparse type: a name registered in ``registry`` (a ``name:argument`` keeps its part
    after the colon, e.g. ``imagefolder:PATH``)."""
    def parse(text: str) -> str:
        base, sep, arg = text.partition(":")
        try:
            return registry.canonical(base) + sep + arg
        except AdvrankError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = registry.kind
    return parse


def names(registry) -> str:
    """``{a,b,...}`` of a registry's names, each with the argument it takes (``imagefolder:PATH``,
    from the part's ``takes_argument``)."""
    def name(n: str) -> str:
        arg = registry.entry(n).info.get("takes_argument")
        return f"{n}:{arg}" if arg else n

    return "{" + ",".join(map(name, registry.names())) + "}"


def cmd_train(args) -> None:
    from advrank.core.runtime import resolve_device, run_record
    from advrank.defenses import make_defense
    from advrank.training import TrainConfig, train

    if args.defense is None and any(v is not None for v in (
            args.defense_eps, args.defense_steps, args.defense_step_size)):
        raise AdvrankError("--defense-eps/--defense-steps/--defense-step-size need --defense")
    config = TrainConfig(
        dataset=args.dataset, arch=args.arch, metric=args.metric, loss=args.loss,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, margin=args.margin,
        embed_dim=args.embed_dim, seed=args.seed, data_root=args.data_root,
        download=args.download, device=args.device, weights=args.weights,
        pretrained=args.pretrained)
    config.validate()
    defense = None
    if args.defense:  # attacks with the trained model's metric (the trainer binds it)
        defense = make_defense(args.defense, eps=args.defense_eps, dataset=args.dataset,
                               steps=args.defense_steps, step_size=args.defense_step_size)
    result = train(config, args.out, init=args.init, defense=defense, progress=not args.quiet,
                   force=args.force)
    meta = result.meta
    text_r1 = meta.extra.get("text_recall@1")
    emit(args, {"checkpoint": result.checkpoint, "recall@1": meta.recall_at_1,
                "epochs": meta.epochs_done, "train_seconds": meta.train_seconds,
                "history": result.history, "metric": meta.metric, "loss": meta.loss,
                "defense": meta.defense, "defense_eps": meta.defense_eps,
                **({"text_recall@1": text_r1} if text_r1 is not None else {}),
                **run_record(resolve_device(args.device), args.seed)},
         f"wrote {result.checkpoint}: R@1 {meta.recall_at_1:.2f}% "
         + (f"(text-to-image R@1 {text_r1:.2f}%) " if text_r1 is not None else "")
         + f"after {meta.epochs_done} epochs ({meta.train_seconds:.0f}s)")


def cmd_evaluate(args) -> None:
    import torch

    from advrank.core.metrics import nmi, query_metrics

    target = load_target_from_args(args)
    g = target.gallery
    if target.queries is not None:  # a --query-fraction split: queries against the rest
        q_emb, q_labels = target.queries
        metrics = query_metrics(q_emb, q_labels, g.embeddings, g.labels, g.distance, args.ks,
                                None)
        if args.nmi:
            metrics["nmi"] = nmi(g.embeddings, g.labels, g.distance)
    elif target.info:  # a picture collection, already embedded (unreadable pictures left out)
        metrics = query_metrics(g.embeddings, g.labels, g.embeddings, g.labels, g.distance,
                                args.ks, torch.arange(len(g)))
        if args.nmi:
            metrics["nmi"] = nmi(g.embeddings, g.labels, g.distance)
    else:  # the gallery as its own (left-out) query set
        metrics = g.metrics(args.ks, with_nmi=args.nmi)
    out = {**target.record(args.seed), "gallery_size": len(target.gallery), **metrics}
    text = "  ".join(f"{k} {v:.2f}%" for k, v in metrics.items() if k.startswith("recall"))
    extra = f"  NMI {metrics['nmi']:.2f}%" if "nmi" in metrics else ""
    if args.queries is not None:
        out["text"] = text_quality(target, args)
        extra += "\n" + "  ".join(
            [f"text-to-image ({out['text']['labelled_texts']} texts with a class):"]
            + [f"{k} {v:.2f}%" for k, v in out["text"].items() if k.startswith("recall")]
            + [f"mAP {out['text']['map']:.2f}%"])
    emit(args, out, f"{target.meta.dataset}/{target.meta.arch}/{target.meta.metric}: "
                    f"{text}  mAP {metrics['map']:.2f}%{extra}")


def text_quality(target, args) -> dict:
    """Text-to-image R@K and mAP of ``--queries`` on the target's gallery."""
    from advrank.experiments.textqueries import load_text_queries, text_retrieval

    return text_retrieval(target, load_text_queries(target, args.queries), args.ks)


def cmd_export(args) -> None:
    from pathlib import Path

    from advrank.core.io import check_writable_file
    from advrank.models.checkpoint import export_checkpoint

    check_writable_file(args.out, "copy")
    meta = export_checkpoint(args.checkpoint, args.out)
    size = Path(args.out).stat().st_size
    emit(args, {"checkpoint": str(args.out), "source": str(args.checkpoint), "bytes": size,
                "dataset": meta.dataset, "arch": meta.arch},
         f"wrote {args.out} ({size / 2**20:.1f} MiB, weights and metadata only)")


def _train_options(p) -> None:
    """train an embedding model (metric learning)

    Train an embedding model with a metric-learning loss on class-balanced batches; writes a
    checkpoint every epoch. Rerunning the same command resumes an interrupted run."""
    p.add_argument("--dataset", required=True, type=registered(DATASETS),
                   metavar=names(DATASETS),
                   help="dataset to train on; imagefolder:PATH (a sub-folder per class) and "
                        "csv:FILE (path,label rows) name their pictures")
    p.add_argument("--arch", type=registered(MODELS), metavar=names(MODELS),
                   help=f"model architecture (default: {TRAIN_DEFAULTS['arch']}, or --init's)")
    p.add_argument("--metric", type=registered(DISTANCES), metavar=names(DISTANCES),
                   help="distance for training and ranking (default: cosine, or --init's)")
    p.add_argument("--loss", type=registered(LOSSES), metavar=names(LOSSES),
                   help="metric-learning loss (default: triplet, or --init's)")
    p.add_argument("--margin", type=number(0.0, 100.0, low_open=True),
                   help="loss margin in distance units (default: triplet 0.2 cosine / 1.0 "
                        "Euclidean; contrastive 0.5 / 1.0; or --init's)")
    p.add_argument("--epochs", type=integer(1, 100_000), default=8, help="training epochs")
    p.add_argument("--batch-size", type=integer(4, 1_000_000), default=128,
                   help="images per batch (m per class from batch / classes)")
    p.add_argument("--lr", type=number(0.0, 10.0, low_open=True), default=1e-3,
                   help="Adam learning rate")
    p.add_argument("--embed-dim", type=integer(1, MAX_EMBED_DIM),
                   help="embedding size (default per model: c2f1 1024, lenet 128, resnet18 and "
                        "resnet50 512; "
                        "or --init's)")
    p.add_argument("--out", required=True, type=path_value, help="checkpoint path to write")
    p.add_argument("--resume", action="store_true",
                   help="accepted for old scripts: rerunning the same command always resumes")
    p.add_argument("--force", action="store_true",
                   help="overwrite a checkpoint of a different run at --out")
    p.add_argument("--init", default=None, type=path_value,
                   help="fine-tune this checkpoint (inherits arch, embed-dim, metric, loss and "
                        "margin; a conflicting option is refused)")
    p.add_argument("--weights", default=None, type=path_value,
                   help="pretrained backbone weights: a torchvision/timm state_dict (.pt, "
                        ".pth) or .safetensors, read safely; e.g. ImageNet ResNet-18 for SOP")
    p.add_argument("--pretrained", nargs="?", const="DEFAULT", default=None, metavar="WEIGHTS",
                   help="start from the published ImageNet weights of --arch's backbone "
                        "(resnet18, resnet50: torchvision's DEFAULT, or a weights enum member "
                        "such as IMAGENET1K_V2), read from the torch hub cache or downloaded "
                        "into it")
    p.add_argument("--defense", default=None, type=registered(DEFENSES),
                   metavar=names(DEFENSES),
                   help="adversarial training: est = embedding-shift (Eq. 13); madry = "
                        "adversarial triplets from the ranking attacks (baseline); act = "
                        "anti-collapse triplets (robrank, T-PAMI 2024)")
    p.add_argument("--defense-eps", type=eps_value, default=None,
                   help="defense epsilon, e.g. 0.3 or 8/255 (default: the dataset's, 0.3 for "
                        "MNIST)")
    p.add_argument("--defense-steps", type=integer(1, 100_000), default=None,
                   help="PGD steps per training batch (default: the paper's eta for that eps, "
                        "30 at 0.3; fewer is proportionally cheaper)")
    p.add_argument("--defense-step-size", type=number(0.0, 1.0, low_open=True), default=None,
                   help="PGD step size for the defense (default: the paper's alpha)")


def _evaluate_options(p) -> None:
    """Recall@K, mAP (and NMI) of a model on its collection

    Embed the test set (or --data) once and rank it against itself, each query left out of
    its own list (or the --query-fraction split against the rest). Every figure is in %."""
    add_target_options(p)
    p.add_argument("--ks", type=listed(positive_int, "positive integers"), default=[1, 2, 4, 8],
                   help="comma-separated K for Recall@K")
    p.add_argument("--nmi", action="store_true", help="also report NMI (k-means, %%)")
    add_queries(p)


def _export_options(p) -> None:
    """weights-only copy of a checkpoint (no optimiser state)

    Copy a checkpoint without its optimiser state, e.g. to share it or move it to another
    machine. The source is validated like every command validates checkpoints."""
    p.add_argument("--checkpoint", required=True, type=path_value,
                   help="the advrank checkpoint to copy")
    p.add_argument("--out", required=True, type=path_value, help="path of the copy")


COMMANDS = (
    Command("train", cmd_train, _train_options),
    Command("evaluate", cmd_evaluate, _evaluate_options),
    Command("export", cmd_export, _export_options,
            common=add_json),
)
