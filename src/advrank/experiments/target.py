"""What every command attacks or evaluates: a model, the collection it ranks (X) and the
embedded gallery — loaded by one function, :func:`load_target`, from either form:

* a checkpoint (``--checkpoint FILE``): one of advrank's own models, its test set as X unless
  ``data`` names another collection;
* a model source (``--model timm:resnet50 --weights FILE --metric cosine``) with a collection
  (``--data imagefolder:PATH``).

Picture collections are embedded through :mod:`advrank.core.embedcache` (unreadable pictures
skipped and counted, embeddings cached on disk when a cache folder is given).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrank.core.checks import check_number, check_path, check_progress
from advrank.core.embedcache import embed_collection
from advrank.core.gallery import Gallery
from advrank.core.io import file_sha256, strict_json
from advrank.core.meta import ModelMeta
from advrank.core.runtime import resolve_device, run_record
from advrank.data import load_dataset, split_name
from advrank.data.geometry import Geometry
from advrank.errors import AdvrankError
from advrank.models.checkpoint import model_from_checkpoint
from advrank.models.dual import text_encoder
from advrank.models.sources.base import SourceOptions
from advrank.registry import DATASETS, DISTANCES, plugin_record

#: options that only make sense with a model source: the fields of SourceOptions
SOURCE_ONLY = tuple(f.name for f in fields(SourceOptions))


@dataclass
class TargetSpec(SourceOptions):
    """Exactly one of ``checkpoint`` or ``model`` (a source such as ``timm:resnet50``, which
    needs ``data``). ``metric`` (default cosine); ``weights``, ``pretrained``, ``layer``,
    ``embed_dim``, ``input_size``, ``mean``, ``std``: the
    :class:`~advrank.models.sources.SourceOptions` it extends. ``cache_dir``: where
    picture-collection embeddings are cached (None: not cached);
    ``query_fraction``: a deterministic query/gallery split (queries only measure retrieval);
    ``max_unreadable``: the fraction of undecodable pictures skipped before giving up;
    ``allow_outside_root``: a listing may read pictures whose real path leaves its root."""

    checkpoint: str | None = None
    model: str | None = None
    data: str | None = None
    metric: str | None = None
    cache_dir: str | None = None
    workers: int = 0
    batch_size: int = 64
    query_fraction: float | None = None
    max_unreadable: float = 0.01
    allow_outside_root: bool = False

    def validate(self) -> TargetSpec:
        """Refuse inconsistent forms before any work (one line each)."""
        if (self.checkpoint is None) == (self.model is None):
            raise AdvrankError("give either --checkpoint FILE or --model SOURCE (with --data), "
                               "not " + ("both" if self.checkpoint else "neither"))
        if self.checkpoint is not None:
            given = [f"--{k.replace('_', '-')}" for k in (*SOURCE_ONLY, "metric")
                     if getattr(self, k) is not None]
            if given:
                raise AdvrankError(f"{', '.join(given)} apply to --model, not to --checkpoint "
                                   "(a checkpoint carries its own weights, metric and input size)")
        else:
            from advrank.models.sources import parse_source

            parse_source(self.model)
            if self.data is None:
                raise AdvrankError("--model needs --data (e.g. imagefolder:PATH): an outside "
                                   "model has no test set of its own")
            if self.metric is not None:
                DISTANCES.canonical(self.metric)
        if self.data is not None:
            DATASETS.canonical(split_name(self.data)[0])
        if self.query_fraction is not None:
            check_number(self.query_fraction, "query fraction", low=0.0, low_open=True,
                         high=1.0, high_open=True)
        check_number(self.max_unreadable, "max unreadable fraction", low=0.0, high=1.0)
        check_number(self.workers, "workers", low=0, high=256, integer=True)
        check_number(self.batch_size, "embedding batch size", low=1, high=1_000_000,
                     integer=True)
        if self.cache_dir is not None and Path(self.cache_dir).exists() and \
                not Path(self.cache_dir).is_dir():
            raise AdvrankError(f"cache folder {self.cache_dir} exists and is not a folder")
        return self

    @property
    def plain_checkpoint(self) -> bool:
        """A checkpoint on its own test set, without a query split: loaded exactly as before
        model sources existed."""
        return self.checkpoint is not None and self.data is None and self.query_fraction is None


@dataclass
class Target:
    """A model with its gallery. ``meta`` describes the model (dataset, arch, metric,
    defense...), ``fingerprint`` identifies model and data (SHA-256 prefix of the checkpoint;
    for other forms, of the weights' and the collection's fingerprints). ``info``: what a
    source model or a picture collection adds to results (fingerprints, unreadable pictures,
    cache); ``queries``: ``(embeddings [Q, D], labels [Q])`` of a query/gallery split."""

    model: nn.Module
    meta: ModelMeta
    gallery: Gallery
    device: torch.device
    source: str
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)
    queries: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def dataset(self):
        return self.gallery.dataset

    def describe(self) -> dict[str, Any]:
        """What results record about the model they were measured on."""
        meta = self.meta
        return {"checkpoint": self.source if self.info.get("model") is None else None,
                "checkpoint_sha": self.fingerprint,
                "dataset": meta.dataset, "arch": meta.arch,
                "metric": meta.metric, "loss": meta.loss,
                "defense": meta.defense, "defense_eps": meta.defense_eps,
                "recall@1": meta.recall_at_1, **self.info}

    def record(self, seed: int) -> dict[str, Any]:
        """Provenance (command, seed, commit, hardware, date) plus :meth:`describe`."""
        return {**run_record(self.device, seed), **self.describe()}


def _stderr(msg: str) -> None:
    print(f"advrank: {msg}", file=sys.stderr)


def _build_model(spec: TargetSpec, log) -> tuple[nn.Module, ModelMeta, Geometry, dict]:
    """The model, its meta, the geometry pictures are read at, and what to record."""
    if spec.checkpoint is not None:
        net, meta = model_from_checkpoint(spec.checkpoint)
        # the paper's models see the whole picture squeezed to their size (28x28 grey)
        geometry = Geometry(meta.image_shape, None, "bilinear")
        return net, meta, geometry, {"checkpoint_file_sha": file_sha256(spec.checkpoint, 12)}
    from advrank.models.sources import load_source_model

    options = SourceOptions(**{name: getattr(spec, name) for name in SOURCE_ONLY})
    model, found = load_source_model(str(spec.model), options, log)
    info: dict[str, Any] = dict(found)
    # the outside model's metadata, read once here (as a checkpoint's is where it is read)
    meta = ModelMeta(dataset=str(spec.data), arch=str(spec.model),
                     metric=spec.metric or "cosine", embed_dim=model.embed_dim,
                     image_shape=model.image_shape, mean=tuple(info["mean"]),
                     std=tuple(info["std"]))
    return model, meta, model.geometry, info


def _drop_unreadable(dataset, embedded, spec: TargetSpec, log):
    """Keep the readable members; refuse when more than ``max_unreadable`` failed."""
    bad, n = embedded.unreadable, len(dataset)
    if not bad:
        return dataset
    first = f"{bad[0]['item']} ({bad[0]['error']})"
    if len(bad) > spec.max_unreadable * n:
        raise AdvrankError(f"{len(bad)} of {n} images of {dataset.name} cannot be read, e.g. "
                           f"{first}; fix or remove them (more than {spec.max_unreadable:.0%} "
                           "are skipped only with a higher --max-unreadable)")
    log(f"skipped {len(bad)} unreadable image(s) of {n}, e.g. {first}")
    dataset = dataset.subset(embedded.keep)
    if dataset.class_names is not None:
        from advrank.data.folders import check_classes

        check_classes(dataset.labels, dataset.class_names,
                      f"{dataset.name} without its unreadable images")
    return dataset


def _load_collection(model, meta: ModelMeta, geometry, spec: TargetSpec, device, data_root,
                     download, split, progress, log, info, check=None
                     ) -> tuple[Gallery, Any, dict]:
    """Embed the collection (cached, unreadable pictures skipped) and split off queries."""
    from advrank.models.weights import state_fingerprint

    data = spec.data or meta.dataset
    dataset = load_dataset(data, split, data_root, download, geometry=geometry,
                           allow_outside_root=spec.allow_outside_root)
    skipped = getattr(dataset, "skipped", {})
    if skipped:
        log(f"{data}: left out " + ", ".join(f"{n} {why}" for why, n in skipped.items()))
    if tuple(dataset.image_shape) != tuple(model.image_shape):
        raise AdvrankError(f"{data} images are {list(dataset.image_shape)}, the model takes "
                           f"{list(model.image_shape)}; give a picture collection "
                           "(imagefolder:PATH or csv:FILE), which is resized to fit")
    if check is not None:  # the listed collection: before the slow embedding
        check(len(dataset))
    data_sha = dataset.fingerprint()
    model_sha = state_fingerprint(model)
    key = {"cache": 2, "model_sha": model_sha, "model": spec.model or "checkpoint",
           "code_sha": info.get("code_sha"), "plugins": plugin_record(),
           "geometry": geometry.describe(), "data": data, "data_sha": data_sha,
           "n": len(dataset), "dtype": str(next(iter(model.state_dict().values())).dtype)}
    embedded = embed_collection(model, dataset, device, key, spec.cache_dir, spec.batch_size,
                                spec.workers, progress=progress, log=log)
    n_listed = len(dataset)
    dataset = _drop_unreadable(dataset, embedded, spec, log)
    emb, labels = embedded.embeddings, dataset.labels.to(embedded.embeddings.device)
    queries = None
    if spec.query_fraction is not None:
        from advrank.data.folders import split_queries

        q_idx, g_idx = split_queries(dataset, spec.query_fraction)
        queries = (emb[q_idx.to(emb.device)], labels[q_idx.to(emb.device)])
        dataset, emb, labels = dataset.subset(g_idx), emb[g_idx.to(emb.device)], \
            labels[g_idx.to(emb.device)]
    info.update({"data": data, "data_sha": data_sha, "model_sha": model_sha,
                 "content_sha": embedded.content_sha(), "skipped": skipped,
                 "plugins": plugin_record(),
                 "images_listed": n_listed, "unreadable_images": len(embedded.unreadable),
                 "unreadable": embedded.unreadable[:100], "cache": embedded.cache,
                 "query_fraction": spec.query_fraction,
                 "queries": 0 if queries is None else int(queries[1].numel()),
                 "geometry": geometry.describe()})
    gallery = Gallery(dataset, emb, labels, DISTANCES.get(meta.metric)())
    if check is not None and len(gallery) != n_listed:  # again, without the left-out images
        check(len(gallery))
    return gallery, queries, info


def target_form(item: Any, what: str = "checkpoint") -> Path | TargetSpec:
    """What :func:`load_target` accepts, checked before any work: a checkpoint path (it must
    exist) or a :class:`TargetSpec` (validated)."""
    if isinstance(item, TargetSpec):
        return item.validate()
    return check_path(item, what)


def load_target(checkpoint: str | Path | TargetSpec, device: str | torch.device = "auto",
                data_root: str | Path | None = None, download: bool = False,
                split: str = "test", progress: bool | None = None,
                check: Callable[[int], object] | None = None,
                log: Callable[[str], None] | None = None, needs_text: bool = False) -> Target:
    """The model and gallery X of ``checkpoint`` (a path: its dataset's ``split``, embedded
    once with the checkpoint's metric) or of a :class:`TargetSpec` (either form).

    ``check(|X|)`` runs once the collection is listed and before it is embedded (the slow
    part): a command refuses there the options that do not fit the gallery (T, w/m, G...).
    ``needs_text``: a model without a text tower is refused as soon as it is built.
    """
    spec = checkpoint if isinstance(checkpoint, TargetSpec) else \
        TargetSpec(checkpoint=str(checkpoint))
    spec.validate()
    device = resolve_device(device)
    check_progress(progress)
    log = log or (_stderr if progress else (lambda msg: None))
    if spec.plain_checkpoint:
        model, meta = model_from_checkpoint(spec.checkpoint, device)
        if needs_text:
            text_encoder(model, str(spec.checkpoint))
        dataset = load_dataset(meta.dataset, split, data_root, download)
        if check is not None:
            check(len(dataset))
        gallery = Gallery.build(model, dataset, meta.metric, device, progress=progress)
        fingerprint, plugins = file_sha256(spec.checkpoint, 12), plugin_record()
        if plugins:  # a plugin may replace the model's class or an attack: not the same run
            fingerprint = hashlib.sha256(strict_json({"checkpoint": fingerprint,
                                                      "plugins": plugins}).encode()
                                         ).hexdigest()[:12]
        return Target(model, meta, gallery, device, str(spec.checkpoint), fingerprint,
                      {"plugins": plugins} if plugins else {})
    if check is not None and spec.data is not None:  # refused before the model is built
        check(len(load_dataset(spec.data, split, data_root, download,
                               allow_outside_root=spec.allow_outside_root)))
    built, meta, geometry, info = _build_model(spec, log)
    if needs_text:
        text_encoder(built, str(spec.checkpoint or spec.model))
    built = built.to(device).eval()
    probe = getattr(built, "probe", None)
    if probe is not None:  # an outside model, at the real batch size on its device
        probe((2, spec.batch_size))
    gallery, queries, info = _load_collection(built, meta, geometry, spec, device, data_root,
                                              download, split, progress, log, info, check)
    meta = replace(meta, dataset=info["data"])
    ident = {k: info.get(k) for k in ("model_sha", "data_sha", "geometry", "query_fraction",
                                      "unreadable_images")}
    # what else determines the figures: the model's code, the pictures' content, the plugins
    ident.update({k: info[k] for k in ("code_sha", "content_sha", "plugins") if info.get(k)})
    digest = hashlib.sha256(strict_json({**ident, "metric": meta.metric}).encode())
    source = spec.checkpoint if spec.checkpoint is not None else spec.model
    return Target(built, meta, gallery, device, str(source), digest.hexdigest()[:12], info,
                  queries)


@dataclass(frozen=True)
class Loader:
    """How a run loads what it measures: on ``device``, datasets under ``data_root``
    (downloaded when ``download``), with progress bars when ``progress``; ``log`` takes the
    notes (None: stderr when ``progress``). A command declares one from its options; the
    experiments load through it."""

    device: str | torch.device = "auto"
    data_root: str | Path | None = None
    download: bool = False
    progress: bool | None = None
    log: Callable[[str], None] | None = None

    def _note(self, msg: str) -> None:
        if self.log is not None:
            self.log(f"advrank: {msg}")

    def load(self, spec: str | Path | TargetSpec, split: str = "test",
             check: Callable[[int], object] | None = None, needs_text: bool = False) -> Target:
        """:func:`load_target` of ``spec`` (``check(|X|)``: before the collection is
        embedded; ``needs_text``: the model must have a text tower)."""
        return load_target(spec, self.device, self.data_root, self.download, split=split,
                           progress=self.progress, check=check,
                           log=None if self.log is None else self._note, needs_text=needs_text)

    def index(self, target: Target, spec: str | None, cache_dir: str | Path | None = None):
        """The ``spec`` search (:func:`~advrank.core.index.build_index`) over the target's
        gallery, ranked by its model's metric (None without a spec), saved in ``cache_dir``
        when one is given."""
        if spec is None:
            return None
        from advrank.core.index import build_index

        return build_index(target.gallery.embeddings, target.meta.metric, spec, cache_dir,
                           target.fingerprint, self._note)
