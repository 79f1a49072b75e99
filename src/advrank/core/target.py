"""What a search is built over and an attack is measured on: :class:`SearchTarget`, a model
with its embedded gallery.

A typing protocol, so the layers that take a target (the oracles, the HTTP service, the
experiments) name what they read without importing the loader that makes one:
:class:`advrank.experiments.target.Target` (from :func:`~advrank.experiments.target.
load_target`) is the implementation; a test may pass any object with these attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

from advrank.core.gallery import Gallery
from advrank.core.meta import ModelMeta


class SearchTarget(Protocol):
    """A model and its gallery. ``model``: images ``[B, C, H, W]`` in [0, 1] -> embeddings
    ``[B, D]``; ``gallery``: the collection X embedded by it (``[N, D]``, labels, distance);
    ``meta``: what the model is (its metric and input shape...); ``fingerprint``: identifies
    model and data; ``device``: where the model runs; ``source``: the checkpoint or model
    source it came from; ``info``: what loading recorded (the collection's geometry,
    fingerprints, unreadable pictures)."""

    @property
    def model(self) -> nn.Module: ...

    @property
    def gallery(self) -> Gallery: ...

    @property
    def meta(self) -> ModelMeta: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def source(self) -> str: ...

    @property
    def info(self) -> Mapping[str, Any]: ...
