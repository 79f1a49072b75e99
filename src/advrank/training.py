"""Metric-learning training: class-balanced batches, pytorch-metric-learning losses, Adam.

``train(config)`` trains (or resumes, or fine-tunes) a model and writes a checkpoint after every
epoch, atomically, so an interrupted run continues where it stopped. An optional
``batch_transform(model, images, labels) -> images`` replaces each training batch, which is how
the adversarial-training defenses plug in.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrank.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from advrank.data import dataset_info, load_dataset
from advrank.distances import Distance, get_distance
from advrank.errors import AdvrankError
from advrank.models import create_model
from advrank.ranking import embed_dataset, retrieval_metrics
from advrank.utils import resolve_device, seed_everything

LOSSES = ("triplet", "contrastive")
BatchTransform = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def default_margin(loss: str, metric: str) -> float:
    """Paper-like margins, in distance units: triplet 0.2 (cosine) / 1.0 (Euclidean);
    contrastive negative margin 0.5 (cosine) / 1.0 (Euclidean)."""
    if loss == "triplet":
        return 0.2 if metric == "cosine" else 1.0
    return 0.5 if metric == "cosine" else 1.0


def make_loss(loss: str, distance: Distance, margin: float) -> nn.Module:
    """The pytorch-metric-learning loss over all valid triplets/pairs of a batch."""
    from pytorch_metric_learning import losses

    pml_dist = distance.to_pml()
    if loss == "triplet":
        return losses.TripletMarginLoss(margin=margin, distance=pml_dist)
    if loss == "contrastive":
        if pml_dist.is_inverted:  # similarity: positives want sim >= 1, negatives sim <= 1 - m
            return losses.ContrastiveLoss(pos_margin=1.0, neg_margin=1.0 - margin,
                                          distance=pml_dist)
        return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=margin, distance=pml_dist)
    raise AdvrankError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")


@dataclass
class TrainConfig:
    dataset: str = "digits"
    arch: str = "c2f1"
    metric: str = "cosine"
    loss: str = "triplet"
    epochs: int = 8
    batch_size: int = 128
    samples_per_class: int | None = None  # None: batch_size // classes (at least 2, at most 16)
    lr: float = 1e-3
    margin: float | None = None
    embed_dim: int | None = None
    seed: int = 0
    data_root: str | None = None
    download: bool = False
    device: str = "auto"
    defense: str | None = None
    defense_eps: float | None = None
    extra_meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    checkpoint: str
    meta: dict[str, Any]
    history: list[dict[str, float]]


def _sampler(labels: torch.Tensor, batch_size: int, m: int | None):
    from pytorch_metric_learning.samplers import MPerClassSampler

    num_classes = int(labels.unique().numel())
    if m is None:
        m = max(2, min(16, batch_size // num_classes))
    batch_size = max(m, (batch_size // m) * m)  # MPerClassSampler needs a multiple of m
    if m * num_classes < batch_size:
        batch_size = m * num_classes
    sampler = MPerClassSampler(labels.numpy(), m=m, batch_size=batch_size,
                               length_before_new_iter=len(labels))
    return sampler, batch_size


def _batch_recall(emb: torch.Tensor, labels: torch.Tensor, distance: Distance) -> float:
    with torch.no_grad():
        d = distance.pairwise(emb, emb)
        d.fill_diagonal_(float("inf"))
        return (labels[d.argmin(1)] == labels).float().mean().item() * 100.0


def train(
    config: TrainConfig, out: str | Path, resume: bool = False, init: str | Path | None = None,
    batch_transform: BatchTransform | None = None, progress: bool = True,
) -> TrainResult:
    """Train ``config`` and write the checkpoint to ``out`` after every epoch.

    ``resume``: continue from ``out`` if it holds an unfinished run of the same config.
    ``init``: start from another checkpoint's weights (fine-tuning, e.g. for a defense).
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    out = Path(out)
    device = resolve_device(config.device)
    info = dataset_info(config.dataset)
    distance = get_distance(config.metric)
    margin = config.margin if config.margin is not None else default_margin(config.loss,
                                                                             config.metric)
    loss_fn = make_loss(config.loss, distance, margin)
    seed_everything(config.seed)
    train_set = load_dataset(config.dataset, "train", config.data_root, config.download)
    test_set = load_dataset(config.dataset, "test", config.data_root, config.download)

    model = create_model(config.arch, info.image_shape, config.embed_dim, info.mean, info.std)
    meta = {
        "dataset": config.dataset, "arch": config.arch, "metric": config.metric,
        "loss": config.loss, "margin": margin, "embed_dim": model.embed_dim,
        "image_shape": list(info.image_shape), "mean": list(info.mean), "std": list(info.std),
        "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
        "seed": config.seed, "defense": config.defense, "defense_eps": config.defense_eps,
        "init": str(init) if init else None, **config.extra_meta,
    }
    if init is not None:
        init_model, init_meta = model_from_checkpoint(init)
        for key in ("dataset", "arch", "embed_dim"):
            if init_meta.get(key) != meta[key]:
                raise AdvrankError(
                    f"--init checkpoint has {key}={init_meta.get(key)!r}, this run {meta[key]!r}"
                )
        model.load_state_dict(init_model.state_dict())
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    start_epoch, history, elapsed = 0, [], 0.0
    if resume and out.exists():
        ckpt = load_checkpoint(out)
        old = ckpt["meta"]
        for key in ("dataset", "arch", "metric", "loss", "margin", "lr", "embed_dim", "seed",
                    "defense", "defense_eps", "init"):
            if old.get(key) != meta[key]:
                raise AdvrankError(f"cannot resume {out}: it has {key}={old.get(key)!r}, "
                                   f"this run {meta[key]!r}")
        model.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = int(ckpt.get("epoch", 0))
        history = list(old.get("history", []))
        elapsed = float(old.get("train_seconds", 0.0))

    _, batch_size = _sampler(train_set.labels, config.batch_size, config.samples_per_class)
    meta["batch_size"] = batch_size
    for epoch in range(start_epoch, config.epochs):
        seed_everything(config.seed * 1000 + epoch)  # resumable: each epoch reseeds itself
        # a fresh sampler too: MPerClassSampler shuffles its label list in place, so a reused
        # one would draw different batches after a resume than in an uninterrupted run
        sampler, _ = _sampler(train_set.labels, config.batch_size, config.samples_per_class)
        loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True)
        t0 = time.time()
        model.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", file=sys.stderr,
                   disable=not progress, leave=False)
        run_loss, run_r1, n = 0.0, 0.0, 0
        for images, labels in bar:
            images, labels = images.to(device), labels.to(device)
            if batch_transform is not None:
                images = batch_transform(model, images, labels)
                model.train()
            emb = model(images)
            loss = loss_fn(emb, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n += 1
            run_loss += (loss.item() - run_loss) / n
            run_r1 += (_batch_recall(emb.detach(), labels, distance) - run_r1) / n
            bar.set_postfix(loss=f"{run_loss:.4f}", batch_r1=f"{run_r1:.1f}")
        elapsed += time.time() - t0
        metrics = evaluate_model(model, test_set, distance, device, ks=(1,))
        record = {"epoch": epoch + 1, "loss": run_loss, "recall@1": metrics["recall@1"],
                  "seconds": elapsed}
        history.append(record)
        if progress:
            print(f"epoch {epoch + 1}/{config.epochs}: loss {run_loss:.4f}  "
                  f"test R@1 {metrics['recall@1']:.2f}%  ({elapsed:.0f}s)", file=sys.stderr)
        meta.update({"recall@1": metrics["recall@1"], "history": history,
                     "train_seconds": elapsed, "epochs_done": epoch + 1})
        save_checkpoint(out, model, meta, optimizer, epoch + 1)

    if start_epoch >= config.epochs and not history:
        raise AdvrankError(f"{out} already holds a finished run")
    final = load_checkpoint(out)["meta"]
    return TrainResult(checkpoint=str(out), meta=final, history=final.get("history", []))


def evaluate_model(
    model: nn.Module, dataset, distance: Distance, device: torch.device | str = "cpu",
    ks=(1, 2, 4, 8), with_map: bool = False,
) -> dict[str, float]:
    """Embed ``dataset`` once and compute Recall@K (and mAP) with it as gallery and queries."""
    from advrank.ranking import recall_at_k

    emb = embed_dataset(model, dataset, device)
    labels = dataset.labels.to(emb.device)
    if with_map:
        return retrieval_metrics(emb, labels, distance, ks)
    return {f"recall@{k}": v for k, v in recall_at_k(emb, labels, distance, ks).items()}

