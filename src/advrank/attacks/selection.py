"""The §4 selection rules, shared by the attack kinds: who is attacked (the anchors: c for CA,
q for QA) and against what (Q, C, C_SP). Everything is drawn up front from one seeded
generator, so results do not depend on the batch size used later."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from advrank.core.gallery import Gallery
from advrank.core.metrics import nearest_neighbors
from advrank.errors import AdvrankError


@dataclass
class Selection:
    """T attacks: ``anchors [T]`` (the gallery items perturbed), ``targets [T, k]`` (Q or C),
    ``sp [T, G]`` (C_SP, QA only) and any further per-attack tensors a kind needs in ``extra``
    (each ``[T, ...]``). ``positions [T]``: each attack's index in the full selection, which
    keys its random start."""

    anchors: torch.Tensor
    targets: torch.Tensor | None = None
    sp: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    positions: torch.Tensor | None = None

    def __post_init__(self):
        if self.positions is None:
            self.positions = torch.arange(self.anchors.numel())

    def __len__(self) -> int:
        return int(self.anchors.numel())

    def slice(self, s: int, e: int) -> Selection:
        def cut(t):
            return None if t is None else t[s:e]

        return Selection(self.anchors[s:e], cut(self.targets), cut(self.sp),
                         {k: v[s:e] for k, v in self.extra.items()}, self.positions[s:e])

    def take(self, index: torch.Tensor) -> Selection:
        """The attacks at ``index [n]`` (positions kept, so each keeps its random start)."""
        def cut(t):
            return None if t is None else t[index]

        return Selection(self.anchors[index], cut(self.targets), cut(self.sp),
                         {k: v[index] for k, v in self.extra.items()}, self.positions[index])

    def same_as(self, other: Selection) -> bool:
        def eq(a, b):
            return (a is None and b is None) or (
                a is not None and b is not None and torch.equal(a, b))

        return (eq(self.anchors, other.anchors) and eq(self.targets, other.targets)
                and eq(self.sp, other.sp) and self.extra.keys() == other.extra.keys()
                and all(eq(v, other.extra[k]) for k, v in self.extra.items()))


def top_pool_size(n: int, fraction: float = 0.01) -> int:
    """Size of the "top 1%" pool of an n-item ranking list (at least one item)."""
    return max(1, math.ceil(fraction * n))


def check_num_attacks(num_attacks: int, n: int) -> None:
    """T must be a positive integer and at most |X| (each item is attacked at most once)."""
    if isinstance(num_attacks, bool) or not isinstance(num_attacks, int) or num_attacks < 1:
        raise AdvrankError(f"the number of attacks must be a positive integer, got "
                           f"{num_attacks!r}")
    if num_attacks > n:
        raise AdvrankError(f"{num_attacks} attacks requested but the gallery has only {n} items "
                           "(T <= |X|: each item is attacked at most once)")


#: T when none is asked for: min(DEFAULT_NUM_ATTACKS, |X|), in every command
DEFAULT_NUM_ATTACKS = 1000


def num_attacks_for(num_attacks: int | None, n: int,
                    note: Callable[[str], None] | None = None) -> int:
    """T on an n-item collection: ``num_attacks`` (checked: at most n), or when None the one
    default rule min(DEFAULT_NUM_ATTACKS, n), with ``note`` told when n caps it."""
    if num_attacks is not None:
        check_num_attacks(num_attacks, n)
        return int(num_attacks)
    if n < DEFAULT_NUM_ATTACKS and note is not None:
        note(f"T = {n} attacks (the collection's size; the default is "
             f"min({DEFAULT_NUM_ATTACKS}, |X|))")
    return min(DEFAULT_NUM_ATTACKS, n)


def draw_anchors(n: int, num_attacks: int, gen: torch.Generator) -> torch.Tensor:
    """T distinct anchors: the first T of a seeded random permutation of X (T <= |X|)."""
    check_num_attacks(num_attacks, n)
    return torch.randperm(n, generator=gen)[:num_attacks]


#: above this many candidates per row, k distinct indices are drawn by rejection instead of
#: ``multinomial`` (which needs an [rows, n] weight matrix); every gallery of the paper is below
LARGE_DRAW = 1 << 17


def random_others(anchors: torch.Tensor, n: int, k: int, gen: torch.Generator,
                  chunk: int = 512) -> torch.Tensor:
    """For each anchor, k distinct random indices of [0, n) other than the anchor itself."""
    rows = []
    for s in range(0, anchors.numel(), chunk):
        a = anchors[s : s + chunk]
        if n - 1 > LARGE_DRAW:
            idx = distinct_randint(a.numel(), n - 1, k, gen)
        else:
            idx = torch.multinomial(torch.ones(a.numel(), n - 1), k, replacement=False,
                                    generator=gen)
        rows.append(idx + (idx >= a[:, None]).long())  # skip over the anchor
    return torch.cat(rows)


def distinct_randint(rows: int, n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``[rows, k]``: k distinct uniform indices of [0, n) per row (k <= n), drawn i.i.d.
    with every repeated entry redrawn until none is left: a uniform draw without replacement,
    in O(rows * k) memory whatever n (a 10M-item gallery needs no [rows, n] matrix)."""
    idx = torch.randint(0, n, (rows, k), generator=gen)
    while True:
        ordered, order = idx.sort(dim=1, stable=True)
        repeat = torch.zeros_like(idx, dtype=torch.bool)
        repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]  # every occurrence after the first
        if not repeat.any():
            return idx
        repeat = torch.zeros_like(repeat).scatter_(1, order, repeat)
        idx[repeat] = torch.randint(0, n, (int(repeat.sum()),), generator=gen)


def random_columns(pool: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k random distinct entries of each row of ``pool [T, P]``."""
    cols = torch.rand(pool.shape, generator=gen).argsort(dim=1)[:, :k]
    return pool.gather(1, cols)


def check_size(k: int, n: int, size_name: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > n - 2:
        raise AdvrankError(f"{size_name} = {k} does not fit a gallery of {n} items "
                           f"(need 1 <= {size_name} <= {n - 2})")


def check_pool(k: int, n: int, top_fraction: float, size_name: str) -> int:
    """The size of an n-item gallery's top ``top_fraction`` pool (each item's own copy left
    out), which must hold k targets."""
    pool_size = top_pool_size(n - 1, top_fraction)
    if k > pool_size:
        raise AdvrankError(
            f"{size_name} = {k} is larger than the top-{top_fraction:.0%} pool of this {n}-item "
            f"gallery ({pool_size} items); lower {size_name} or raise the top fraction"
        )
    return pool_size


def top_pool_targets(gallery: Gallery, anchors: torch.Tensor, k: int, gen: torch.Generator,
                     top_fraction: float, size_name: str) -> torch.Tensor:
    """k random members of each anchor's top ``top_fraction`` (its own copy left out)."""
    pool_size = check_pool(k, len(gallery), top_fraction, size_name)
    emb = gallery.embeddings
    pool = nearest_neighbors(emb[anchors.to(emb.device)], emb, pool_size, gallery.distance,
                             anchors.to(emb.device)).cpu()
    return random_columns(pool, k, gen)


def ranked_targets(gallery: Gallery, anchors: torch.Tensor, k: int, gen: torch.Generator,
                   from_top: bool, top_fraction: float, size_name: str) -> torch.Tensor:
    """§4's targets ``[T, k]``: k random others ("+" attacks) or k random members of the
    anchor's top ``top_fraction`` ("-" attacks, ``from_top``)."""
    if from_top:
        return top_pool_targets(gallery, anchors, k, gen, top_fraction, size_name)
    return random_others(anchors, len(gallery), k, gen)


def sp_candidates(gallery: Gallery, queries: torch.Tensor, chosen: torch.Tensor, g: int = 5,
                  query_embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """C_SP (Eq. 12): the top-G of each query in X \\ C (and not the query itself). ``[T, G]``.

    ``queries [T]`` are gallery indices (left out of their own lists); pass
    ``query_embeddings [T, D]`` and ``queries=None`` for queries that are not gallery members.
    """
    emb = gallery.embeddings
    q = emb[queries.to(emb.device)] if query_embeddings is None else query_embeddings
    own = None if queries is None else queries.to(emb.device)
    nn_idx = nearest_neighbors(q, emb, g + chosen.shape[1], gallery.distance, own).cpu()
    in_c = (nn_idx[:, :, None] == chosen.cpu()[:, None, :]).any(-1)
    order = in_c.int().argsort(dim=1, stable=True)[:, :g]  # first G neighbours not in C
    return nn_idx.gather(1, order)
