"""Distance objects: one decides cosine vs Euclidean for training, ranking and attacks alike.

``pairwise(a [N, D], b [M, D]) -> [N, M]`` and ``paired(a [..., D], b [..., D]) -> [...]``.
Both are differentiable; a smaller value means "more similar" (ranked higher). Distances are
registered in :data:`advrank.registry.DISTANCES`; a new one is a subclass plus
``DISTANCES.register(name, cls)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advrank.registry import DISTANCES


class Distance:
    name: str = "distance"
    #: ``pairwise_prepared(a, p) == from_dot(transform(a) @ p.T)``: the attacks' reduced-
    #: precision paths then multiply in bf16/tf32 and write the derivative out by hand
    dot_product_form: bool = False

    def transform(self, a: torch.Tensor) -> torch.Tensor:
        """The query side of the dot-product form (``dot_product_form`` distances only)."""
        raise NotImplementedError

    def from_dot(self, products: torch.Tensor) -> torch.Tensor:
        """Distances from the dot products ``transform(a) @ prepare(b).T``; its derivative in
        the products is :attr:`dot_slope` (a constant)."""
        raise NotImplementedError

    dot_slope: float = 0.0

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, gallery: torch.Tensor) -> torch.Tensor:
        """Precompute what ``pairwise_prepared`` needs of a fixed gallery ``[N, D]`` (once)."""
        return gallery

    def pairwise_prepared(self, a: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        """``pairwise(a, b)`` with ``prepared = prepare(b)``: the per-step fast path."""
        return self.pairwise(a, prepared)

    def to_pml(self):
        """The equivalent pytorch-metric-learning distance, for its losses and miners."""
        raise NotImplementedError

    #: how a FAISS index ranks by this distance: the name of the FAISS metric it searches
    #: (``METRIC_INNER_PRODUCT``, ``METRIC_L2``); None: no index does (exact search only)
    index_metric: str | None = None

    def index_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Rows ``[N, D]`` as an index holds (gallery) and searches (queries) them."""
        return x

    def from_index_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """This distance from an index's scores (its ``index_metric`` values), ``[B, k]``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@DISTANCES.register("cosine")
class CosineDistance(Distance):
    """``1 - cos(a, b)``, i.e. one minus the dot product of L2-normalised embeddings; in [0, 2]."""

    name = "cosine"
    dot_product_form = True
    dot_slope = -1.0

    def transform(self, a):
        return F.normalize(a, dim=-1)

    def from_dot(self, products):
        return 1.0 - products

    def pairwise(self, a, b):
        return 1.0 - F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)

    def paired(self, a, b):
        return 1.0 - (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)

    def prepare(self, gallery):
        return F.normalize(gallery, dim=-1)

    def pairwise_prepared(self, a, prepared):
        return 1.0 - F.normalize(a, dim=-1) @ prepared.transpose(-1, -2)

    def to_pml(self):
        from pytorch_metric_learning.distances import CosineSimilarity

        return CosineSimilarity()

    # an inner product of L2-normalised rows: the cosine, 1 - cos the distance
    index_metric = "METRIC_INNER_PRODUCT"

    def index_rows(self, x):
        return F.normalize(x, dim=-1)

    def from_index_scores(self, scores):
        return 1.0 - scores


@DISTANCES.register("euclidean")
class EuclideanDistance(Distance):
    """``||a - b||_2``; the square root is taken of a clamped value so gradients stay finite."""

    name = "euclidean"

    def pairwise(self, a, b):
        sq = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(-2) - 2.0 * a @ b.transpose(
            -1, -2
        )
        return sq.clamp_min(1e-12).sqrt()

    def paired(self, a, b):
        return ((a - b) ** 2).sum(-1).clamp_min(1e-12).sqrt()

    def to_pml(self):
        from pytorch_metric_learning.distances import LpDistance

        return LpDistance(normalize_embeddings=False, p=2)

    # FAISS's L2 metric gives squared distances
    index_metric = "METRIC_L2"

    def from_index_scores(self, scores):
        return scores.clamp_min(0).sqrt()


def distance_names() -> list[str]:
    return DISTANCES.names()


def get_distance(name: str | Distance) -> Distance:
    """A distance object by registered name (a Distance passes through unchanged)."""
    if isinstance(name, Distance):
        return name
    return DISTANCES.get(name)()
