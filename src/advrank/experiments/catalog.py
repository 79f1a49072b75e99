"""White-box CA± through a catalog's ingestion (issue 31 (a)): the lab's c~, uploaded as a
seller uploads a photo, measured by the searches its target queries make.

For each of the T attacks (the paper's §4 selection, run on the local model as
:func:`~advrank.experiments.protocol.run_attack` runs them, float pixels):

1. c~ is uploaded (``POST /items``: an 8-bit PNG, then the service's decode, ``--pipeline``,
   embedding and insertion into its index, whichever kind);
2. each query q of Q searches with its own picture (through the same pipeline) and reads,
   in one answer, where c~, q and the clean c sit (``rank_of`` where the service offers it,
   else its top ``max_k`` list, "beyond" censored at that depth);
3. c~ is deleted before the next attack, so no attack competes with another's upload.

The clean candidate c is **kept** in the catalog (not deleted first): an audit must leave
the catalog as it found it, and a deletion is for good (ids are never reused). The lab's
measure lets c~ replace c (c~ competes with the other candidates, not with its own clean
copy, and q is left out of its own list); the same figure is read from the endpoint by
leaving out q and c wherever they rank ahead of c~. The "before" endpoint figure is c's own
place in the same answer (q and c~ left out).

Figures (per attack, % of |X| as the lab's ``rank``): ``rank`` (the lab's, float pixels),
``rank_seen`` (the lab's for the upload as the service sees it: 8 bits, then the service's
declared pipeline, for queries and c~ alike) and ``endpoint`` (read from the service).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from advrank.attacks.base import AttackKind, get_attack
from advrank.attacks.ca import CandidateAttack
from advrank.attacks.selection import Selection
from advrank.core.execution import ExecutionPolicy, get_policy
from advrank.core.gallery import Gallery
from advrank.core.metrics import count_closer
from advrank.core.pipeline import get_pipeline, to_8bit
from advrank.errors import AdvrankError
from advrank.experiments.protocol import (
    attack_batches,
    check_threat,
    embed_images,
    plan_for,
)
from advrank.experiments.results import AttackResult, RankLog
from advrank.oracles.catalog import CatalogClient
from advrank.oracles.wire import describe


@dataclass
class CatalogResult(AttackResult):
    """An :class:`AttackResult` of CA± through a catalog: the lab's figures beside the
    endpoint's; ``extra["catalog"]`` holds what the run used (uploads, deletions, searches,
    the ids it uploaded) and how the endpoint was read."""

    headline: str = "endpoint"


class EndpointReader:
    """Reads where an upload lands for its queries: ``rank_of`` at the service's ``max_k``
    when it offers it, its top-``max_k`` list otherwise (positions beyond it read as
    ``max_k``: censored, said so). An approximate index (HNSW, IVF) may not return an item at
    any depth: such readings are censored too, and counted in ``not_returned`` (c before,
    c~ after)."""

    def __init__(self, client: CatalogClient, n: int):
        info = client.info
        self.client, self.n = client, n
        self.depth = info.max_k
        self.named = bool(info.named_ranks)
        kind = str((info.index or {}).get("index", "exact"))
        # an approximate index's answer may leave members out at any depth: what it does not
        # return is read at the depth (censored), and counted
        self.exact = kind in ("exact", "flat")
        self.censored_at = None if self.depth >= n and self.exact else self.depth
        self.not_returned = {"before": 0, "after": 0}

    def places(self, query: torch.Tensor, ids: list[int]) -> list[int | None]:
        """Where each of ``ids`` sits in the answer to ``query [C, H, W]`` (None: beyond)."""
        if self.named:
            return self.client.ranks(query, ids, self.depth)
        top = self.client.top(query, self.depth)
        return [top.index(i) if i in top else None for i in ids]

    def read(self, query: torch.Tensor, new: int, q: int, c: int) -> tuple[float, float]:
        """``(before, after)``: the members ahead of c (q and c~ left out) and of c~ (q and
        c left out), as the lab counts them."""
        places = self.places(query, [new, q, c])
        at = [self.depth if p is None else p for p in places]
        self.not_returned["after"] += places[0] is None
        self.not_returned["before"] += places[2] is None

        def ahead(i: int) -> int:
            return at[i] - sum(1 for j in range(3) if j != i and places[j] is not None
                               and places[j] < at[i])

        return float(ahead(2)), float(ahead(0))


def seen(images: torch.Tensor, pipeline: str | None) -> torch.Tensor:
    """``images [B, C, H, W]`` as the service decodes an upload of them: the 8-bit PNG, then
    its declared ``pipeline``."""
    eight = to_8bit(images.detach()) / 255.0
    return get_pipeline(None if pipeline in (None, "none") else pipeline)(eight)


@torch.no_grad()
def seen_ranks(model, gallery: Gallery, part: Selection, adv: torch.Tensor,
               pipeline: str | None) -> dict[str, torch.Tensor]:
    """The lab's R_CA ``[B]`` (before: clean c; after: c~) with queries and c~ as the
    service sees them (:func:`seen`); the gallery as embedded."""
    g, dist, n = gallery.embeddings, gallery.distance, len(gallery)
    b, w = part.targets.shape
    flat = part.targets.reshape(-1)
    q = embed_images(model, seen(gallery.images(flat).to(adv.device), pipeline))
    c_rep = part.anchors.repeat_interleave(w)
    excl = torch.stack([flat, c_rep], 1).to(g.device)
    out = {}
    for when, cand in (("before", g[part.anchors.to(g.device)]),
                       ("after", embed_images(model, seen(adv, pipeline)))):
        thr = dist.paired(q, cand.repeat_interleave(w, 0))[:, None]
        ranks = count_closer(q, thr, g, dist, exclude=excl)[:, 0].float()
        out[when] = (100.0 * ranks / n).reshape(b, w).mean(1)
    return out


def through_catalog(reader: EndpointReader, gallery: Gallery, part: Selection,
                    adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The endpoint's R_CA ``[B]`` before (clean c) and after (c~ uploaded), each c~ deleted
    once its queries have searched."""
    before, after = [], []
    for row in range(len(part)):
        c = int(part.anchors[row])
        new = reader.client.upload(adv[row].cpu())
        try:
            figures = [reader.read(gallery.images(torch.tensor([q]))[0].cpu(), new, q, c)
                       for q in part.targets[row].tolist()]
        finally:
            reader.client.delete(new)
        before.append(sum(f[0] for f in figures) / len(figures))
        after.append(sum(f[1] for f in figures) / len(figures))
    scale = 100.0 / reader.n
    return torch.tensor(before) * scale, torch.tensor(after) * scale


def check_catalog_kind(kind: AttackKind) -> CandidateAttack:
    if not isinstance(kind, CandidateAttack) or getattr(kind, "queries", None) is not None:
        raise AdvrankError(f"the catalog path runs CA+ or CA- (a candidate a seller uploads), "
                           f"not {kind.name}")
    return kind


def white_box_batches(model, gallery: Gallery, kind: AttackKind, threat, k: int,
                      num_attacks: int, seed: int = 0, batch_size: int = 256,
                      progress: bool | None = None, policy: ExecutionPolicy | None = None,
                      ) -> Iterator[tuple[Selection, torch.Tensor]]:
    """The lab's white-box attacks (the §4 selection, PGD on float pixels, as
    :func:`~advrank.experiments.protocol.run_attack` runs them): ``(part, c~ [B, C, H, W])``
    batch by batch."""
    policy = get_policy(policy)
    selection = kind.select(gallery, k, num_attacks, seed)
    plan = plan_for(model, gallery, kind, k, batch_size, selection, policy)
    return attack_batches(model, gallery, kind, threat, selection, seed, batch_size, progress,
                          f"{kind.name} (lab, for the catalog)", policy, k, plan)


def run_catalog_attack(
    model, gallery: Gallery, kind: AttackKind | str, client: CatalogClient, eps: float, k: int,
    num_attacks: int, seed: int = 0, batch_size: int = 256, threat=None,
    progress: bool | None = None, policy: ExecutionPolicy | None = None,
    batches: Iterable[tuple[Selection, torch.Tensor]] | None = None,
) -> CatalogResult:
    """T = ``num_attacks`` white-box CA± attacks (``kind``, w = ``k`` queries each, at
    ``eps``) on the local ``model`` over ``gallery`` (the service's own collection: same ids),
    each c~ uploaded through ``client`` and measured by its queries' searches, then deleted
    (see the module). Needs T uploads of the client's budget, refused before any work when
    it has fewer; 3-id searches, w per attack. ``batches``: the lab's ``(part, c~)`` made
    once by :func:`white_box_batches` (the same images through several services)."""
    kind = check_catalog_kind(get_attack(kind) if isinstance(kind, str) else kind)
    threat = kind.threat_for(check_threat(threat, eps))
    policy = get_policy(policy)
    info = client.read_info()
    if info.gallery_size != len(gallery) or info.id_bound < len(gallery):
        raise AdvrankError(f"the service holds {info.gallery_size} items (ids to "
                           f"{info.id_bound - 1}), the local gallery {len(gallery)}: serve the "
                           "same checkpoint and data (items added and removed since are fine)")
    spare = client.ledger.budget - client.ledger.used
    if spare < num_attacks:
        raise AdvrankError(f"{num_attacks} attacks upload {num_attacks} pictures; the upload "
                           f"budget leaves {spare}")
    reader = EndpointReader(client, len(gallery))
    t0, log, searches0 = time.time(), RankLog(), client.searches
    if batches is None:
        batches = white_box_batches(model, gallery, kind, threat, k, num_attacks, seed,
                                    batch_size, progress, policy)
    for part, adv in batches:
        with torch.no_grad():
            clean = kind.measure(gallery, part, gallery.embeddings[part.anchors])
            attacked = kind.measure(gallery, part, embed_images(model, adv))
        lab = seen_ranks(model, gallery, part, adv, info.pipeline)
        before, after = through_catalog(reader, gallery, part, adv)
        log.add({**clean, "rank_seen": lab["before"], "endpoint": before},
                {**attacked, "rank_seen": lab["after"], "endpoint": after})
    result = log.result(kind, eps, k, gallery, threat, time.time() - t0)
    out = CatalogResult(**{**result.__dict__, "headline": "endpoint"})
    out.extra["catalog"] = {
        "service": describe(client.read_info()), "index": info.index,
        "pipeline": info.pipeline, "clean_candidate": "kept (c~ read as replacing it)",
        "read_by": "rank_of" if reader.named else "top-k", "depth": reader.depth,
        "censored_at": reader.censored_at, "not_returned": reader.not_returned,
        "uploads_used": client.ledger.used,
        "upload_budget": client.ledger.budget, "deletions": len(client.deleted),
        "searches_used": client.searches - searches0, "uploaded_ids": list(client.uploaded),
        "held_after": client.held}
    return out
