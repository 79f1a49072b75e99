"""The local oracle: a model and its gallery in this process, searched exactly or through the
same FAISS index a deployed search runs (:func:`advrank.core.index.build_index`). A simulation
of the deployed service without HTTP: no 8-bit upload unless ``eight_bit`` is asked for, and
an upload ``pipeline`` (``jpeg:75``) when one is given."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advrank.core.checks import check_int
from advrank.core.index import VectorIndex, build_index, check_index_spec
from advrank.core.target import SearchTarget
from advrank.models.dual import text_encoder
from advrank.oracles.base import Feedback, Oracle
from advrank.registry import ORACLES


@ORACLES.register("local", argument="[INDEX]")
class LocalOracle(Oracle):
    """``model`` embeds the pictures, ``index`` (a :class:`VectorIndex` over the gallery's
    embeddings) ranks them; ``chunk`` pictures go through the model at a time."""

    name = "local"

    def __init__(self, model: nn.Module, index: VectorIndex, feedback: Feedback | str,
                 chunk: int = 1024, eight_bit: bool = False, pipeline: str | None = None):
        super().__init__(feedback, index.size, pipeline)
        self.model, self.index = model.eval(), index
        self.chunk = check_int(chunk, "oracle chunk", low=1)
        self.eight_bit = bool(eight_bit)
        self.device = next(iter(model.parameters())).device

    @classmethod
    def check_argument(cls, argument: str) -> None:
        if argument:
            check_index_spec(argument)

    @classmethod
    def from_spec(cls, argument: str, target: SearchTarget, feedback: Feedback,
                  **options: Any) -> LocalOracle:
        """``local`` (exact search) or ``local:INDEX`` (an index spec, e.g. ``hnsw``) over
        ``target``'s gallery; ``options``: ``cache_dir`` (the index's), ``pipeline`` (the
        upload pipeline every picture goes through first), ``eight_bit`` (pictures on the
        8-bit grid, as a PNG upload to a service puts them)."""
        index = build_index(target.gallery.embeddings, target.meta.metric,
                            argument or "exact", options.get("cache_dir"), target.fingerprint)
        return cls(target.model, index, feedback, pipeline=options.get("pipeline"),
                   eight_bit=bool(options.get("eight_bit", False)))

    @torch.no_grad()
    def search(self, images, depth, scores):
        ids, dist = [], []
        for s in range(0, images.shape[0], self.chunk):
            emb = self.model(images[s : s + self.chunk].to(self.device)).float()
            i, d = self.index.search(emb, depth)
            ids.append(i)
            dist.append(d)
        return torch.cat(ids), (torch.cat(dist) if scores else None)

    @torch.no_grad()
    def search_texts(self, texts, depth, scores):
        """Text queries through the model's text tower (one error line for a model without
        one), ranked by the same index as pictures."""
        dual = text_encoder(self.model, "the local oracle's model")
        ids, dist = [], []
        for s in range(0, len(texts), self.chunk):
            emb = dual.encode_text(texts[s : s + self.chunk]).to(self.device).float()
            i, d = self.index.search(emb, depth)
            ids.append(i)
            dist.append(d)
        return torch.cat(ids), (torch.cat(dist) if scores else None)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "index": self.index.info}
