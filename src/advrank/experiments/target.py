"""What every command attacks or evaluates: a model, the collection it ranks (X) and the
embedded gallery — loaded by one function, :func:`load_target`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrank.core.checks import check_progress
from advrank.core.gallery import Gallery
from advrank.core.io import file_sha256
from advrank.core.runtime import resolve_device, run_record
from advrank.data import load_dataset
from advrank.models.checkpoint import model_from_checkpoint


@dataclass
class Target:
    """A model with its gallery. ``meta`` describes the model (dataset, arch, metric,
    defense...), ``fingerprint`` identifies its weights (SHA-256 prefix of the checkpoint)."""

    model: nn.Module
    meta: dict[str, Any]
    gallery: Gallery
    device: torch.device
    source: str
    fingerprint: str

    @property
    def dataset(self):
        return self.gallery.dataset

    def describe(self) -> dict[str, Any]:
        """What results record about the model they were measured on."""
        meta = self.meta
        return {"checkpoint": self.source, "checkpoint_sha": self.fingerprint,
                "dataset": meta.get("dataset"), "arch": meta.get("arch"),
                "metric": meta.get("metric"), "loss": meta.get("loss"),
                "defense": meta.get("defense"), "recall@1": meta.get("recall@1")}

    def record(self, seed: int) -> dict[str, Any]:
        """Provenance (command, seed, commit, hardware, date) plus :meth:`describe`."""
        return {**run_record(self.device, seed), **self.describe()}


def load_target(checkpoint: str | Path, device: str | torch.device = "auto",
                data_root: str | Path | None = None, download: bool = False,
                split: str = "test", progress: bool | None = None,
                check: Callable[[int], None] | None = None) -> Target:
    """The model of ``checkpoint`` and its dataset's ``split`` as the gallery X, embedded once
    with the checkpoint's own metric.

    ``check(|X|)`` runs once the dataset is loaded and before it is embedded (the slow part):
    a command refuses there the options that do not fit the gallery (T, w/m, G...).
    """
    device = resolve_device(device)
    check_progress(progress)
    model, meta = model_from_checkpoint(checkpoint, device)
    dataset = load_dataset(meta["dataset"], split, data_root, download)
    if check is not None:
        check(len(dataset))
    gallery = Gallery.build(model, dataset, meta["metric"], device, progress=progress)
    return Target(model, meta, gallery, device, str(checkpoint), file_sha256(checkpoint, 12))
