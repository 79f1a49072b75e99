"""The audit's retrieval cell: Recall@K and mAP of the audited model on its collection."""

from __future__ import annotations

from typing import Any

import torch

from advrank.core.metrics import query_metrics
from advrank.experiments.audit.settings import RECALL_KS
from advrank.experiments.target import Target


def retrieval_figures(target: Target, max_queries: int, seed: int) -> dict[str, Any]:
    """Recall@1/2/4/8 and mAP (%): the query split against the gallery, or members of X as
    queries left out of their own lists (a seeded sample of ``max_queries`` when X is larger)."""
    g = target.gallery
    n = len(g)
    if target.queries is not None:
        q_emb, q_labels = target.queries
        own, mode = None, "query split vs gallery"
    else:
        idx = torch.arange(n)
        if n > max_queries:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_queries]
            idx = idx.sort().values
        dev = g.embeddings.device
        q_emb, q_labels, own = g.embeddings[idx.to(dev)], g.labels[idx.to(dev)], idx
        mode = "each member of X vs the rest" + (" (a seeded sample)" if n > max_queries else "")
    figures = query_metrics(q_emb, q_labels, g.embeddings, g.labels, g.distance, RECALL_KS, own)
    return {**figures, "queries": int(q_labels.numel()), "query_mode": mode,
            "gallery_size": n, "classes": int(g.labels.unique().numel())}
