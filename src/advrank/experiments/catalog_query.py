"""Query-only CA± through the catalog (issue 31 (b)): no gradient and no local model in the
loop. The seller uploads variants of the candidate's photo, its target queries search, and
the best variant so far is kept; every variant is deleted once read.

Each evaluation of a variant costs one upload and w searches (its place for each query of
Q, read as :class:`~advrank.experiments.catalog.EndpointReader` reads it: the clean c kept
in the catalog, q and c left out of the count). Uploads and searches are budgeted apart, per
attack (``uploads``, ``searches``): an attack stops when either would be passed.

The optimiser is a random search of square patches on the 8-bit grid inside the L-inf ball
(the Square attack's L-inf proposal, Andriushchenko et al. 2020): a patch of the best image
is set to c ± eps (a random sign per channel), the patch side shrinking with the uploads
spent; the variant is kept when its endpoint rank is better (CA+ lower, CA- higher).
"""

from __future__ import annotations

import math
import time

import torch

from advrank.attacks.base import AttackKind, get_attack
from advrank.attacks.ca import CandidateAttack
from advrank.attacks.selection import Selection
from advrank.core.checks import check_int
from advrank.core.gallery import Gallery
from advrank.errors import AdvrankError
from advrank.experiments.catalog import (
    CatalogResult,
    EndpointReader,
    check_catalog_kind,
    embed_images,
)
from advrank.experiments.protocol import check_threat
from advrank.experiments.results import RankLog
from advrank.oracles.catalog import CatalogClient
from advrank.oracles.wire import describe


def grid_ball(clean: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8-bit values within ``eps`` of ``clean`` and [0, 1]: ``(low, high)``, same shape."""
    low = torch.ceil((clean - eps).clamp(0, 1) * 255 - 1e-6) / 255
    high = torch.floor((clean + eps).clamp(0, 1) * 255 + 1e-6) / 255
    return low, torch.maximum(high, low)


def square_variant(best: torch.Tensor, low: torch.Tensor, high: torch.Tensor, side: int,
                   gen: torch.Generator) -> torch.Tensor:
    """``best [C, H, W]`` with one random ``side`` x ``side`` patch set to the ball's low or
    high value (a random choice per channel)."""
    c, h, w = best.shape
    top = int(torch.randint(0, h - side + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - side + 1, (1,), generator=gen))
    up = torch.rand(c, 1, 1, generator=gen) < 0.5
    out = best.clone()
    patch = (slice(None), slice(top, top + side), slice(left, left + side))
    out[patch] = torch.where(up, high[patch], low[patch])
    return out


def evaluate(reader: EndpointReader, gallery: Gallery, image: torch.Tensor, c: int,
             queries: list[int]) -> tuple[float, float]:
    """``(c's rank, the variant's rank)`` over Q (mean members ahead), one upload and w
    searches; the upload deleted once read."""
    new = reader.client.upload(image)
    try:
        figures = [reader.read(gallery.images(torch.tensor([q]))[0].cpu(), new, q, c)
                   for q in queries]
    finally:
        reader.client.delete(new)
    return (sum(f[0] for f in figures) / len(figures),
            sum(f[1] for f in figures) / len(figures))


def one_attack(reader: EndpointReader, gallery: Gallery, kind: CandidateAttack, c: int,
               queries: list[int], eps: float, uploads: int, searches: int,
               gen: torch.Generator) -> tuple[torch.Tensor, float, float, int, int]:
    """``(best image, c's rank, the best rank, uploads, searches)`` of one attack."""
    clean = gallery.images(torch.tensor([c]))[0].cpu()
    low, high = grid_ball(clean, eps)
    sign = 1.0 if kind.raise_rank else -1.0  # CA+: fewer ahead is better
    side0 = max(1, int(round(math.sqrt(0.3 * clean.shape[1] * clean.shape[2]))))
    best = torch.where(torch.rand(clean.shape, generator=gen) < 0.5, low, high)
    up0, s0 = reader.client.ledger.used, reader.client.searches
    before, best_rank = evaluate(reader, gallery, best, c, queries)
    if sign * before < sign * best_rank:  # the clean photo (its 8-bit copy) is in the ball
        best, best_rank = torch.round(clean * 255) / 255, before
    w = len(queries)
    while (reader.client.ledger.used - up0 < uploads
           and reader.client.searches - s0 + w <= searches):
        spent = (reader.client.ledger.used - up0) / uploads
        side = max(1, int(round(side0 * (1 - spent))))
        cand = square_variant(best, low, high, min(side, clean.shape[1], clean.shape[2]),
                              gen)
        _, rank = evaluate(reader, gallery, cand, c, queries)
        if sign * rank < sign * best_rank:
            best, best_rank = cand, rank
    return (best, before, best_rank, reader.client.ledger.used - up0,
            reader.client.searches - s0)


def run_catalog_query_attack(
    model, gallery: Gallery, kind: AttackKind | str, client: CatalogClient, eps: float,
    k: int, num_attacks: int, uploads: int = 50, searches: int = 2000, seed: int = 0,
    selection: Selection | None = None,
) -> CatalogResult:
    """T = ``num_attacks`` query-only CA± attacks (w = ``k`` queries each, the §4 selection)
    through ``client``, each with at most ``uploads`` uploads and ``searches`` searches (see
    the module). ``model``: the local copy, used only to measure the final images the lab's
    way beside the endpoint's figure (``rank``), never by the optimiser. ``selection``: the
    attacks to run (the §4 selection of T = ``num_attacks`` when None)."""
    kind = check_catalog_kind(get_attack(kind) if isinstance(kind, str) else kind)
    threat = check_threat(None, eps)
    check_int(uploads, "uploads per attack", low=2, high=100_000)
    check_int(searches, "searches per attack", low=2 * k, high=10_000_000)
    if eps < 1 / 255:
        raise AdvrankError(f"eps {eps:g} is below one 8-bit step (1/255): an upload cannot "
                           "move")
    spare = client.ledger.budget - client.ledger.used
    if spare < uploads * num_attacks:
        raise AdvrankError(f"{num_attacks} attacks of {uploads} uploads need "
                           f"{uploads * num_attacks}; the upload budget leaves {spare}")
    info = client.read_info()
    if info.gallery_size != len(gallery) or info.id_bound < len(gallery):
        raise AdvrankError(f"the service holds {info.gallery_size} items, the local gallery "
                           f"{len(gallery)}: serve the same checkpoint and data")
    if selection is None:
        selection = kind.select(gallery, k, num_attacks, seed)
    reader, t0, log = EndpointReader(client, len(gallery)), time.time(), RankLog()
    used: list[tuple[int, int]] = []
    for i in range(len(selection)):
        part = selection.slice(i, i + 1)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        best, before, after, n_up, n_search = one_attack(
            reader, gallery, kind, int(part.anchors[0]), part.targets[0].tolist(), eps,
            uploads, searches, gen)
        used.append((n_up, n_search))
        with torch.no_grad():
            lab_before = kind.measure(gallery, part, gallery.embeddings[part.anchors])
            lab_after = kind.measure(gallery, part, embed_images(model, best[None]))
        scale = 100.0 / len(gallery)
        log.add({**lab_before, "endpoint": torch.tensor([before * scale])},
                {**lab_after, "endpoint": torch.tensor([after * scale])})
    result = log.result(kind, eps, k, gallery, threat, time.time() - t0)
    out = CatalogResult(**{**result.__dict__, "headline": "endpoint"})
    out.extra["catalog"] = {
        "mode": "query-only (square random search on the 8-bit grid)",
        "service": describe(client.read_info()), "pipeline": info.pipeline,
        "read_by": "rank_of" if reader.named else "top-k", "censored_at": reader.censored_at,
        "not_returned": reader.not_returned, "uploads_per_attack": uploads,
        "searches_per_attack": searches, "uploads_used": [u for u, _ in used],
        "searches_used": [s for _, s in used], "deletions": len(client.deleted),
        "uploaded_ids": list(client.uploaded), "held_after": client.held,
        "clean_candidate": "kept (each variant read as replacing it)"}
    return out
