"""Metric-learning training: class-balanced batches, pytorch-metric-learning losses, Adam.

``train(config, out)`` trains a model and writes the checkpoint after every epoch, atomically.
Rerunning the same command continues where an interrupted run stopped (or does nothing when it
had finished); a checkpoint of a *different* run at ``out`` is refused unless ``force=True``.
``init`` fine-tunes from another checkpoint, inheriting its architecture, embedding size,
metric, loss and margin; a defense (``advrank.defenses``) hooks into each step's loss.

Under ``torchrun --nproc-per-node N`` the model is wrapped in DistributedDataParallel: every
process draws the same batches, trains on an equal contiguous share of each, and computes the
loss on the whole batch's embeddings (gathered from the shares, so triplet mining sees the
batch one process sees); DDP averages the gradients. One step then equals one process's step
up to floating-point summation order, for models without batch-norm (each process normalises
its own share) and without a defense (each process draws the random starts of its share).
Rank 0 alone writes the checkpoint.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrank.core import distributed
from advrank.core.checks import (
    check_flag,
    check_int,
    check_number,
    check_path,
    check_progress,
    check_seed,
)
from advrank.core.distances import Distance, get_distance
from advrank.core.gallery import embed_dataset
from advrank.core.io import check_writable_file, exclusive, file_sha256
from advrank.core.meta import ModelMeta
from advrank.core.metrics import recall_at_k, retrieval_metrics
from advrank.core.runtime import progress_bar, resolve_device, seed_everything
from advrank.data import check_dataset_name, dataset_spec, load_dataset
from advrank.defenses.base import Defense
from advrank.errors import AdvrankError
from advrank.models import MAX_EMBED_DIM, create_model
from advrank.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from advrank.models.pretrained import builtin_weights, check_pretrained
from advrank.models.weights import load_pretrained
from advrank.registry import DISTANCES, LOSSES, MODELS
from advrank.training.captions import CAPTION_TEMPLATES, bind_loss, epoch_figures
from advrank.training.losses import default_margin, make_loss

#: what a checkpoint inherits from ``--init`` when the run does not say otherwise
INHERITED = ("arch", "embed_dim", "metric", "loss", "margin")
#: metadata that makes two runs "the same run" (resumable into one another)
IDENTITY = ("dataset", "arch", "metric", "loss", "margin", "lr", "embed_dim", "seed",
            "batch_size", "samples_per_class", "defense", "defense_eps", "init", "weights",
            "pretrained")
DEFAULTS = {"arch": "c2f1", "metric": "cosine", "loss": "triplet"}


@dataclass
class TrainConfig:
    """A training run. ``arch``/``metric``/``loss``/``margin``/``embed_dim`` left as None are
    inherited from ``init`` or take their defaults (c2f1, cosine, triplet, the loss's margin,
    the model's embedding size)."""

    dataset: str = "digits"
    arch: str | None = None
    metric: str | None = None
    loss: str | None = None
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
    weights: str | None = None  # pretrained backbone weights (state_dict or .safetensors)
    pretrained: str | None = None  # published weights ("DEFAULT" or a torchvision enum member)
    extra_meta: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Refuse values that cannot train (before any data is loaded)."""
        check_int(self.epochs, "epochs", low=1, high=100_000)
        check_int(self.batch_size, "batch size", low=4, high=1_000_000)
        check_number(self.lr, "learning rate", low=0.0, low_open=True, high=10.0)
        check_seed(self.seed)
        if self.samples_per_class is not None:
            check_int(self.samples_per_class, "samples per class", low=2, high=self.batch_size)
        if self.margin is not None:
            check_number(self.margin, "margin", low=0.0, low_open=True, high=100.0)
        if self.embed_dim is not None:
            check_int(self.embed_dim, "embedding size", low=1, high=MAX_EMBED_DIM)
        for name, registry in (("arch", MODELS), ("metric", DISTANCES), ("loss", LOSSES)):
            if getattr(self, name) is not None:
                registry.canonical(getattr(self, name))
        check_dataset_name(self.dataset)
        for name in ("data_root", "weights"):
            if getattr(self, name) is not None:
                check_path(getattr(self, name), name)
        if self.pretrained is not None:
            check_pretrained(self.pretrained, self.arch, self.weights)
        check_flag(self.download, "download")
        resolve_device(self.device)
        if not isinstance(self.extra_meta, dict):
            raise AdvrankError("extra_meta must be a dict")


@dataclass
class TrainResult:
    checkpoint: str
    meta: ModelMeta
    history: list[dict[str, float]]


def resolve_config(config: TrainConfig, init_meta: ModelMeta | None) -> TrainConfig:
    """Fill the open settings from ``init_meta`` (fine-tuning) or the defaults; refuse an
    explicit setting that contradicts the checkpoint being fine-tuned."""
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    if init_meta is not None:
        if init_meta.dataset != config.dataset:
            raise AdvrankError(f"--init checkpoint is for dataset {init_meta.dataset!r}, "
                               f"this run for {config.dataset!r}")
        for key in INHERITED:
            given, theirs = values[key], getattr(init_meta, key)
            if given is not None and theirs is not None and given != theirs:
                raise AdvrankError(f"--init checkpoint has {key} {theirs!r} but this run asks "
                                   f"for {given!r}; drop the option to inherit it")
            if given is None:
                values[key] = theirs
    dual = bool(MODELS.entry(values["arch"] or DEFAULTS["arch"]).info.get("text_tower"))
    if values["loss"] is None and dual:
        values["loss"] = "clip"  # a model with a text tower trains on captions
    for key, default in DEFAULTS.items():
        values[key] = values[key] if values[key] is not None else default
    if bool(LOSSES.entry(values["loss"]).info.get("text_tower")) != dual:
        raise AdvrankError(f"--loss {values['loss']} does not train a {values['arch']} model: "
                           + ("a model with a text tower trains with --loss clip" if dual else
                              "--loss clip needs a model with a text tower (--arch clip-tiny)"))
    if values["margin"] is None:
        values["margin"] = default_margin(values["loss"], values["metric"])
    return TrainConfig(**values)


def _sampler(labels: torch.Tensor, batch_size: int, m: int | None):
    """pytorch-metric-learning's MPerClassSampler: m images of each of batch_size / m classes."""
    from pytorch_metric_learning.samplers import MPerClassSampler

    num_classes = int(labels.unique().numel())
    if num_classes < 2:
        raise AdvrankError("metric learning needs at least 2 classes in the training set")
    if m is None:
        m = max(2, min(16, batch_size // num_classes))
    batch_size = max(m, (batch_size // m) * m)  # MPerClassSampler needs a multiple of m
    if m * num_classes < batch_size:
        batch_size = m * num_classes
    if batch_size < 2 * m:
        raise AdvrankError(f"batch size {batch_size} holds one class only ({m} per class); "
                           "raise --batch-size")
    sampler = MPerClassSampler(labels.numpy(), m=m, batch_size=batch_size,
                               length_before_new_iter=len(labels))
    return sampler, batch_size


def _batch_recall(emb: torch.Tensor, labels: torch.Tensor, distance: Distance) -> float:
    with torch.no_grad():
        d = distance.pairwise(emb, emb)
        d.fill_diagonal_(float("inf"))
        return (labels[d.argmin(1)] == labels).float().mean().item() * 100.0


def _build(config: TrainConfig, init, defense: Defense | None):
    """(config, model, the metadata its checkpoint will hold) for the run, with weights from
    ``init`` or ``config.weights``."""
    init_model = init_meta = None
    if init is not None:
        if config.pretrained is not None:
            raise AdvrankError("--pretrained does not go with --init (the checkpoint being "
                               "fine-tuned has its own weights)")
        init_model, init_meta = model_from_checkpoint(init)
    config = resolve_config(config, init_meta)
    weights = config.weights or (builtin_weights(config.arch, config.pretrained)
                                 if config.pretrained else None)
    spec = dataset_spec(config.dataset)
    seed_everything(config.seed)  # the initial weights depend on the seed only
    model = create_model(config.arch, spec.image_shape, config.embed_dim, spec.mean, spec.std)
    if init_model is not None:
        model.load_state_dict(init_model.state_dict())
    elif weights:
        load_pretrained(getattr(model, "image", model).backbone, weights)
    if defense is not None:
        defense.bind(config.metric)
    written = {
        "dataset": config.dataset, "arch": config.arch, "metric": config.metric,
        "loss": config.loss, "margin": config.margin, "embed_dim": model.embed_dim,
        "image_shape": list(spec.image_shape), "mean": list(spec.mean), "std": list(spec.std),
        "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
        "samples_per_class": config.samples_per_class, "seed": config.seed,
        "defense": defense.name if defense else None,
        "defense_eps": defense.eps if defense else None,
        "defense_config": defense.describe() if defense else None,
        "init": str(init) if init else None,
        "weights": file_sha256(weights, 16) if weights and not init else None,
        "pretrained": config.pretrained,
        "captions": (list(CAPTION_TEMPLATES) if LOSSES.entry(config.loss).info.get("text_tower")
                     else None),
        **config.extra_meta,
    }
    return config, model, written


def _resume(out: Path, written: dict, model: nn.Module, optimizer, force: bool):
    """(start epoch, history, seconds) from an unfinished or finished run of the same config
    at ``out``; a different run there is refused unless ``force``."""
    if not out.exists() or force:
        return 0, [], 0.0
    try:
        ckpt = load_checkpoint(out)
    except AdvrankError as exc:
        raise AdvrankError(f"{out} exists and is not a checkpoint of this run ({exc}); pass "
                           "--force to overwrite it") from None
    old = ckpt["meta"]
    for key in IDENTITY:  # a key the file lacks counts as None, the value of an unset option
        if old.get(key) != written.get(key):
            raise AdvrankError(f"{out} holds another run ({key}={old.get(key)!r}, this run "
                               f"{written.get(key)!r}); use another --out or --force to "
                               "overwrite")
    if "epochs_done" not in old:
        raise AdvrankError(f"{out} holds a checkpoint that is not a resumable training run (no "
                           "epochs_done); use another --out or --force to overwrite it")
    if int(ckpt.get("epoch", 0)) > int(written["epochs"]):  # never report 8 epochs as this run's 3
        raise AdvrankError(f"{out} holds this run trained for {ckpt.get('epoch')} epochs, more "
                           f"than the {written['epochs']} asked; ask for --epochs "
                           f"{ckpt.get('epoch')}, use another --out, or --force to retrain")
    model.load_state_dict(ckpt["model"])
    if ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    return int(ckpt.get("epoch", 0)), list(old.get("history", [])), float(
        old.get("train_seconds", 0.0))


def gathered_loss(loss_fn):
    """Under torchrun: the loss of the *whole* batch, from every rank's share of it
    (:func:`distributed.gather_batch`), so in-batch mining sees what one process sees."""
    if not distributed.active() or hasattr(loss_fn, "training_loss"):
        return loss_fn

    def loss(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return loss_fn(distributed.gather_batch(emb), distributed.gather_batch(labels))

    return loss


def my_share(images: torch.Tensor, labels: torch.Tensor):
    """This rank's contiguous share of a batch (all of it in one process)."""
    w, r = distributed.world_size(), distributed.rank()
    if w == 1:
        return images, labels
    n = images.shape[0] // w
    return images[r * n : (r + 1) * n], labels[r * n : (r + 1) * n]


def _train_epoch(model, loader, optimizer, loss_fn, distance, defense, device, bar_desc,
                 progress: bool) -> float:
    """One pass over ``loader``; returns the mean loss. Stops at the first non-finite loss.
    Under torchrun every process reads the same batches and trains on its share of each."""
    model.train()
    bar = progress_bar(loader, desc=bar_desc, unit="batch",
                       enabled=progress if distributed.is_main() else False)
    run_loss, run_r1, n = 0.0, 0.0, 0
    loss_fn = gathered_loss(loss_fn)
    for images, labels in bar:
        images, labels = my_share(images.to(device), labels.to(device))
        if defense is not None:
            loss, emb = defense.training_loss(model, images, labels, loss_fn)
        elif hasattr(loss_fn, "training_loss"):  # a model-level loss (captions: the text tower)
            loss, emb = loss_fn.training_loss(model, images, labels)
        else:
            emb = model(images)
            loss = loss_fn(emb, labels)
        if not torch.isfinite(loss):
            raise AdvrankError(f"training diverged ({bar_desc}, batch {n + 1}: the loss is "
                               f"{loss.item()}); lower --lr or check the data and options. "
                               "The last finished epoch stays in the checkpoint")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += 1
        run_loss += (loss.item() - run_loss) / n
        run_r1 += (_batch_recall(emb.detach(), labels, distance) - run_r1) / n
        bar.set_postfix(loss=f"{run_loss:.4f}", batch_r1=f"{run_r1:.1f}")
    return run_loss


def check_shares(batch_size: int) -> None:
    """Under torchrun each process takes an equal share of every batch: refuse, before any
    training, a batch that does not divide."""
    w = distributed.world_size()
    if batch_size % w:
        raise AdvrankError(f"the training batch ({batch_size} images) does not divide among "
                           f"{w} processes; choose --batch-size a multiple of {w} (and of the "
                           "images per class)")


def parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """The model wrapped in DistributedDataParallel under torchrun (gradients averaged over the
    processes after every backward), the model itself in one process."""
    if not distributed.active():
        return model
    ids = [device.index if device.index is not None else distributed.local_rank()] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _check_train_args(config: TrainConfig, out: str | Path, init: str | Path | None,
                      defense: Defense | None, progress: bool, force: bool) -> Path:
    """Every argument of :func:`train` checked before any work; returns the checkpoint path."""
    if not isinstance(config, TrainConfig):
        raise AdvrankError(f"config must be a TrainConfig, got {type(config).__name__}")
    config.validate()
    if init is not None:
        check_path(init, "init checkpoint")
    if defense is not None and not isinstance(defense, Defense):
        raise AdvrankError(f"defense must be a Defense (make_defense), got "
                           f"{type(defense).__name__}")
    check_progress(progress)
    check_flag(force, "force")
    return check_writable_file(check_path(out, "checkpoint"), "checkpoint")


def train(config: TrainConfig, out: str | Path, init: str | Path | None = None,
          defense: Defense | None = None, progress: bool = True,
          force: bool = False) -> TrainResult:
    """Train ``config`` and write the checkpoint to ``out`` after every epoch (see the module
    docstring for resuming, ``init`` and ``force``). ``defense``: e.g.
    ``make_defense("est", eps=0.3)``; the checkpoint records its ``describe()``."""
    from torch.utils.data import DataLoader

    out = _check_train_args(config, out, init, defense, progress, force)
    device = resolve_device(config.device)
    progress = progress and distributed.is_main()
    lock = exclusive(out.parent / f".{out.name}.lock", f"checkpoint {out}") \
        if distributed.is_main() else contextlib.nullcontext()
    with lock:
        config, model, written = _build(config, init, defense)
        distance = get_distance(config.metric)
        loss_fn = make_loss(config.loss, distance, config.margin)
        train_set = load_dataset(config.dataset, "train", config.data_root, config.download)
        test_set = load_dataset(config.dataset, "test", config.data_root, config.download)
        bind_loss(loss_fn, train_set, defense, distributed.world_size())
        _, written["batch_size"] = _sampler(train_set.labels, config.batch_size,
                                         config.samples_per_class)
        check_shares(written["batch_size"])
        model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        start, history, elapsed = _resume(out, written, model, optimizer, force)
        trained = parallel(model, device)
        if start >= config.epochs and progress:
            print(f"{out} already holds this run, finished ({start} epochs)", file=sys.stderr)
        for epoch in range(start, config.epochs):
            seed_everything(config.seed * 1000 + epoch)  # resumable: each epoch reseeds itself
            # a fresh sampler too: MPerClassSampler shuffles its label list in place, so a reused
            # one would draw different batches after a resume than in an uninterrupted run
            sampler, batch_size = _sampler(train_set.labels, config.batch_size,
                                           config.samples_per_class)
            loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True)
            t0 = time.time()
            loss = _train_epoch(trained, loader, optimizer, loss_fn, distance, defense, device,
                                f"epoch {epoch + 1}/{config.epochs}", progress)
            elapsed += time.time() - t0
            figures = epoch_figures(model, test_set, distance, device)
            history.append({"epoch": epoch + 1, "loss": loss, **figures, "seconds": elapsed})
            if progress:
                text = "  ".join(f"{'text ' if k.startswith('text') else ''}R@1 {v:.2f}%"
                                 for k, v in figures.items())
                print(f"epoch {epoch + 1}/{config.epochs}: loss {loss:.4f}  test {text}  "
                      f"({elapsed:.0f}s)", file=sys.stderr)
            written.update({**figures, "history": history, "train_seconds": elapsed,
                         "epochs_done": epoch + 1})
            if distributed.world_size() > 1:
                written["processes"] = distributed.world_size()
            if distributed.is_main():
                save_checkpoint(out, model, written, optimizer, epoch + 1)
            distributed.barrier()
        final = load_checkpoint(out)["meta"]
    return TrainResult(checkpoint=str(out), meta=ModelMeta.from_dict(final),
                       history=final.get("history", []))


def evaluate_model(
    model: nn.Module, dataset, distance: Distance | str, device: torch.device | str = "cpu",
    ks=(1, 2, 4, 8), with_map: bool = False, with_nmi: bool = False,
    progress: bool | None = None,
) -> dict[str, float]:
    """Embed ``dataset`` once and compute Recall@K (and mAP, NMI; all in percent) with it as
    gallery and queries (each query left out of its own list)."""
    distance = get_distance(distance)
    for name, flag in (("with_map", with_map), ("with_nmi", with_nmi)):
        check_flag(flag, name)
    check_progress(progress)
    emb = embed_dataset(model, dataset, resolve_device(device), progress=progress)
    labels = dataset.labels.to(emb.device)
    if with_map or with_nmi:
        metrics = retrieval_metrics(emb, labels, distance, ks, with_nmi=with_nmi)
        if not with_map:
            metrics.pop("map")
        return metrics
    return {f"recall@{k}": v for k, v in recall_at_k(emb, labels, distance, ks).items()}
