"""The report's Fig. 1-style example panels, recomputed from the seed."""

from __future__ import annotations

from typing import Any

import torch

from advrank.attacks.base import AttackKind
from advrank.experiments.audit.settings import AuditConfig
from advrank.experiments.protocol import (
    attack_batches,
    selection_seed,
)
from advrank.experiments.target import Target


@torch.no_grad()
def _ranked(target: Target, view, top: int) -> tuple[list[int], dict[int, int]]:
    """The first ``top`` members of a view's ranking list and the 0-based rank of each
    highlighted member (members strictly closer than it, exclusions left out)."""
    g = target.gallery
    q = view.query_emb.to(g.device)[None]
    d = g.distance.pairwise(q, g.embeddings)[0].clone()
    if view.replace is not None:
        i, e = view.replace
        d[i] = g.distance.paired(q[0], e.to(g.device))
    if view.exclude:
        d[torch.tensor(view.exclude, device=g.device)] = float("inf")
    order = d.argsort()
    ranks = {h: int((d < d[h]).sum()) for h in view.highlight}
    return order[:top].tolist(), ranks


#: the first attacks of a kind's selection among which the example panels are picked
EXAMPLE_POOL = 32


def example_panels(target: Target, kinds: dict[str, AttackKind], config: AuditConfig,
                   t: int, bar=None) -> list[dict[str, Any]]:
    """Fig. 1-style examples at the largest eps: among the first ``EXAMPLE_POOL`` attacks of
    each kind's selection (re-run exactly as in the measured cell: same draw, same keyed
    random start), the ``examples`` whose rank moved furthest in the attack's direction, so
    the panels show what the attack can do rather than a random draw.
    Each panel: ``images`` (tensors for the page) and ``figures`` (what report.json keeps)."""
    if config.examples == 0:
        return []
    g, eps = target.gallery, max(float(e) for e in config.eps_values)
    panels = []
    for attack, kind in kinds.items():
        if type(kind).view is AttackKind.view:  # a plugin kind without example views
            continue
        k = config.size(kind)
        selection = kind.select(g, k, t, selection_seed(config.seed, attack, k))
        pool = selection.slice(0, min(EXAMPLE_POOL, t))
        advs = torch.cat([adv for _, adv in attack_batches(
            target.model, g, kind, config.threat(eps, kind), pool, config.seed,
            config.batch_size, bar=bar)])
        with torch.no_grad():
            after = target.model(advs)
        before = g.embeddings[pool.anchors.to(g.device)]
        chosen = _largest_moves(kind, kind.measure(g, pool, before)["rank"],
                                kind.measure(g, pool, after)["rank"], config.examples)
        part = pool.take(chosen)
        clean = g.images(part.anchors)
        for i, j in enumerate(chosen.tolist()):
            panels.append(_panel(target, kind, part.slice(i, i + 1), eps, clean[i], advs[j],
                                 before[j : j + 1], after[j : j + 1], config.top))
    return panels


def _largest_moves(kind: AttackKind, before: torch.Tensor, after: torch.Tensor,
                   n: int) -> torch.Tensor:
    """Indices of the ``n`` attacks (of ``before``/``after`` ranks ``[P]``) that moved their
    rank furthest in the kind's direction of success; ties keep the selection order."""
    move = (before - after) if kind.direction == "down" else (after - before)
    order = torch.sort(-move.float().cpu(), stable=True).indices
    return order[: min(n, move.numel())]


def _panel(target: Target, kind: AttackKind, part, eps: float, clean: torch.Tensor,
           adv: torch.Tensor, before: torch.Tensor, after: torch.Tensor, top: int) -> dict:
    g = target.gallery
    ds = g.dataset
    n = len(g)

    def item(i: int) -> dict[str, Any]:
        label = int(g.labels[i])
        return {"index": int(i), "name": ds.item_name(i), "label": ds.label_name(label)}

    lists, ranks = {}, {}
    for when, emb in (("before", before), ("after", after)):
        view = kind.view(g, part, emb)
        lists[when], ranks[when] = _ranked(target, view, top)
    anchor = int(part.anchors[0])
    m_before, m_after = kind.measure(g, part, before), kind.measure(g, part, after)
    figures = {
        "attack": kind.name, "eps": eps, "anchor": item(anchor),
        "query": None if view.query is None else item(view.query),
        "query_text": view.query_text,
        "targets": [{**item(h), "rank_before": ranks["before"][h],
                     "rank_after": ranks["after"][h]} for h in view.highlight],
        "top_before": [{**item(i), "rank": r} for r, i in enumerate(lists["before"])],
        "top_after": [{**item(i), "rank": r} for r, i in enumerate(lists["after"])],
        "measure_before": {k: float(v[0]) for k, v in m_before.items()},
        "measure_after": {k: float(v[0]) for k, v in m_after.items()},
        "linf": float((adv - clean).abs().max()), "gallery_size": n,
        "description": kind.description, "direction": kind.direction,
    }
    idx = sorted({*lists["before"], *lists["after"], *view.highlight,
                  *([view.query] if view.query is not None else [])})
    thumbs = dict(zip(idx, g.images(torch.tensor(idx)).cpu(), strict=True))
    replaced = view.replace[0] if view.replace is not None else None
    return {"figures": figures, "images": {"clean": clean.cpu(), "adversarial": adv.cpu(),
                                           "thumbs": thumbs, "replaced": replaced}}
